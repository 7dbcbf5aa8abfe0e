//! The driver's compiled pipelines kept on disk between runs (wgpu's `PipelineCache`; Vulkan only so far), so a
//! second run skips the driver's shader compilation: next to the autotuner's cache, one file per adapter class
//! ([`wgpu::util::pipeline_cache_key`]; wgpu itself drops data from another driver version or wgpu version).
//!
//! The file is this module's header (a magic line and an FNV-1a checksum of the data) and then wgpu's data: wgpu
//! does not check its data's hash, and a driver handed corrupt data may crash, so a file whose checksum does not
//! match is ignored (and later replaced). Writes are atomic (a temporary file renamed over the old one).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const MAGIC: &[u8; 16] = b"wgtune pipelines";

pub(crate) struct DiskPipelineCache {
    cache: wgpu::PipelineCache,
    path: PathBuf,
    /// Bytes of data at the last load or write (0 without a file): a cache that did not grow is not written
    /// again.
    saved: AtomicUsize,
}

/// The data of a cache file, if its header and checksum hold.
fn unpack(file: &[u8]) -> Option<&[u8]> {
    let data = file.strip_prefix(MAGIC.as_slice())?;
    let (sum, data) = data.split_at_checked(8)?;
    (u64::from_le_bytes(sum.try_into().ok()?) == crate::tune::fnv1a_bytes(data)).then_some(data)
}

fn pack(data: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(MAGIC.len() + 8 + data.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&crate::tune::fnv1a_bytes(data).to_le_bytes());
    file.extend_from_slice(data);
    file
}

impl DiskPipelineCache {
    /// The cache for `device`, loaded from the cache folder: None where the device lacks `PIPELINE_CACHE`, the
    /// backend has no cache key, or there is no cache folder.
    pub(crate) fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
    ) -> Option<DiskPipelineCache> {
        if !features.contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let key = wgpu::util::pipeline_cache_key(info)?;
        let path = crate::tune::cache_dir()?.join(format!("{key}.bin"));
        let file = std::fs::read(&path).ok();
        let data = match file.as_deref().map(unpack) {
            Some(Some(data)) => Some(data),
            Some(None) => {
                log::warn!("pipeline cache {} is damaged: starting anew", path.display());
                None
            }
            None => None,
        };
        // SAFETY: `data` is what `PipelineCache::get_data` returned in an earlier run (written by `save` below
        // with its checksum, which held); wgpu checks that it is for this adapter, driver and wgpu version and
        // falls back to an empty cache otherwise (`fallback`).
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("wgtune pipeline cache"),
                data,
                fallback: true,
            })
        };
        let saved = data.map_or(0, <[u8]>::len);
        log::info!("pipeline cache {} ({saved} bytes loaded)", path.display());
        Some(DiskPipelineCache { cache, path, saved: AtomicUsize::new(saved) })
    }

    pub(crate) fn cache(&self) -> &wgpu::PipelineCache {
        &self.cache
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Write the cache if it grew since it was loaded or last written.
    pub(crate) fn save(&self) {
        let Some(data) = self.cache.get_data() else { return };
        if data.len() <= self.saved.load(Ordering::Relaxed) {
            return;
        }
        match crate::tune::write_cache_file(&self.path, &pack(&data)) {
            Ok(()) => self.saved.store(data.len(), Ordering::Relaxed),
            Err(e) => log::warn!("pipeline cache {} not written: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_file_unpacks_and_a_damaged_one_does_not() {
        let data = b"some driver bytes".to_vec();
        let file = pack(&data);
        assert_eq!(unpack(&file), Some(data.as_slice()));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(unpack(&flipped), None, "a changed byte fails the checksum");
        assert_eq!(unpack(&file[..file.len() - 1]), None, "a truncated file fails it");
        assert_eq!(unpack(&file[..10]), None, "so does a cut header");
        assert_eq!(unpack(&data), None, "data without the header is refused");
        assert_eq!(unpack(&pack(&[])), Some(&[][..]));
    }
}
