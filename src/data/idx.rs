//! The IDX format of MNIST and Fashion-MNIST: a big-endian header (two zero bytes, a type byte, the number of
//! dimensions, one u32 per dimension) then the data. Only unsigned bytes (type 0x08) are read; files ending in
//! `.gz` are gunzipped.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Parse IDX bytes: the dimensions and the data, checked against each other.
pub fn parse(bytes: &[u8], origin: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |why: String| Error::Invalid(format!("'{origin}' is not a valid IDX file: {why}"));
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes, too short for a header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("the magic number does not start with two zero bytes".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x}; only unsigned bytes (0x08) are supported", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || bytes.len() < 4 + 4 * ndim {
        return Err(bad(format!("{ndim} dimensions do not fit a {}-byte file", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[4 + 4 * ndim..];
    if data.len() != want {
        return Err(bad(format!("dimensions {dims:?} need {want} bytes of data, the file has {}", data.len())));
    }
    Ok((dims, data.to_vec()))
}

/// Read and parse an IDX file (gzip when its name ends in `.gz`).
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::Invalid(format!("cannot read '{}': {e}", path.display())))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::Invalid(format!("'{}' is not valid gzip: {e}", path.display())))?;
        out
    } else {
        raw
    };
    parse(&bytes, &path.display().to_string())
}
