//! safetensors in and out: pretrained weights onto a graph's parameters (f32, f16 and bf16 files, memory-mapped),
//! and a trained model back to a file with the metadata `predict` needs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::graph::executor::Executor;
use crate::graph::{Graph, TensorInfo, TensorKind};

/// The bytes of a safetensors file: memory-mapped from disk, embedded in the binary, or handed over in memory
/// (in a browser: the bytes of a fetched or chosen file).
pub enum WeightBytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

/// An opened safetensors file.
pub struct Weights {
    bytes: WeightBytes,
    origin: String,
}

impl Weights {
    /// Memory-map `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Weights> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Invalid(format!("cannot open weights '{}': {e}", path.display())))?;
        // SAFETY: the file is only read; wgtune never writes a weights file in place (saves go to a temporary
        // file that is renamed over the target), so the mapping does not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::Invalid(format!("cannot map weights '{}': {e}", path.display())))?;
        let w = Weights { bytes: WeightBytes::Mapped(map), origin: path.display().to_string() };
        w.parse()?;
        Ok(w)
    }

    /// In a browser there is no file system: the page hands the bytes over with [`Weights::from_bytes`].
    #[cfg(target_arch = "wasm32")]
    pub fn open(path: &Path) -> Result<Weights> {
        Err(Error::Invalid(format!(
            "cannot open weights '{}': a web page has no file system; pass the file's bytes to Weights::from_bytes",
            path.display()
        )))
    }

    /// Weights from bytes in memory (e.g. a file fetched by a web page).
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<Weights> {
        let w = Weights { bytes: WeightBytes::Owned(bytes), origin: origin.to_string() };
        w.parse()?;
        Ok(w)
    }

    /// Weights embedded in the binary (`include_bytes!`).
    pub fn from_static(bytes: &'static [u8], origin: &str) -> Result<Weights> {
        let w = Weights { bytes: WeightBytes::Static(bytes), origin: origin.to_string() };
        w.parse()?;
        Ok(w)
    }

    fn data(&self) -> &[u8] {
        match &self.bytes {
            #[cfg(not(target_arch = "wasm32"))]
            WeightBytes::Mapped(m) => m,
            WeightBytes::Static(s) => s,
            WeightBytes::Owned(v) => v,
        }
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(self.data())
            .map_err(|e| Error::Invalid(format!("'{}' is not a valid safetensors file: {e}", self.origin)))
    }

    /// Where the weights came from (a path, or the name of the embedded asset).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The file's metadata (wgtune writes architecture, classes, input size, normalization, head layout).
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = SafeTensors::read_metadata(self.data())
            .map_err(|e| Error::Invalid(format!("'{}' is not a valid safetensors file: {e}", self.origin)))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Tensor names and shapes.
    pub fn shapes(&self) -> Result<BTreeMap<String, Vec<usize>>> {
        Ok(self.parse()?.iter().map(|(n, v)| (n.to_string(), v.shape().to_vec())).collect())
    }

    /// A tensor as f32 (f16 and bf16 are widened), with its shape; None when the file has no such tensor.
    pub fn get(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let st = self.parse()?;
        let Ok(view) = st.tensor(name) else { return Ok(None) };
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::Invalid(format!(
                    "'{}': tensor '{name}' is {other:?}; wgtune reads F32, F16 and BF16",
                    self.origin
                )))
            }
        };
        // No training or prediction can use NaN or infinite weights: refuse them here, for every reader.
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "'{}': tensor '{name}' holds a non-finite value ({} at index {i}): the weights are broken (a \
                 diverged run saved, or a damaged file)",
                self.origin, values[i]
            )));
        }
        Ok(Some((view.shape().to_vec(), values)))
    }
}

/// Which of a file's tensors went where.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Graph tensors the file did not have, allowed by the caller (a new head).
    pub kept_initial: Vec<String>,
    /// File tensors no graph tensor asked for, allowed by the caller (a cut classifier, counters).
    pub ignored: Vec<String>,
}

/// Copy weights onto the executor's parameters and batch-norm statistics, by name (`rename` maps a graph name to
/// the file's name). A graph tensor missing from the file is an error unless `may_miss` accepts its name; a file
/// tensor that nothing reads is an error unless `may_ignore` accepts it; a shape mismatch is always an error. Errors
/// name the tensor with the expected and found shapes.
pub fn load_into(
    ex: &Executor,
    weights: &Weights,
    rename: impl Fn(&str) -> String,
    may_miss: impl Fn(&str) -> bool,
    may_ignore: impl Fn(&str) -> bool,
) -> Result<LoadReport> {
    for_each_match(ex.graph(), weights, rename, may_miss, may_ignore, |info, values| {
        ex.write_value(&info.name, &values)
    })
}

/// The file's value of every parameter and running statistic of `graph`, by graph name, with the checks of
/// [`load_into`] (nothing may be missing; `may_ignore` names the file tensors nothing reads that are allowed).
pub fn read_for(
    graph: &Graph,
    weights: &Weights,
    may_ignore: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut values = HashMap::new();
    for_each_match(
        graph,
        weights,
        |n| n.to_string(),
        |_| false,
        may_ignore,
        |info, v| {
            values.insert(info.name.clone(), v);
            Ok(())
        },
    )?;
    Ok(values)
}

/// Whether a file tensor of shape `file` holds the values of a graph tensor of shape `graph` in the same order:
/// equal shapes, or equal once trailing 1s are dropped (a Linear's (out, in) weight is a 1x1 convolution's
/// (out, in, 1, 1): timm's ConvNeXt-Tiny and up store their MLPs as Linear layers, wgtune runs them as 1x1 convs).
fn same_layout(file: &[usize], graph: &[usize]) -> bool {
    let trim = |s: &[usize]| s.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    file == graph || (file.len() >= 2 && graph.len() >= 2 && file[..trim(file)] == graph[..trim(graph)])
}

/// Match the file's tensors to the graph's parameters and statistics (see [`load_into`]) and hand each matched
/// value to `each`.
fn for_each_match(
    g: &Graph,
    weights: &Weights,
    rename: impl Fn(&str) -> String,
    may_miss: impl Fn(&str) -> bool,
    may_ignore: impl Fn(&str) -> bool,
    mut each: impl FnMut(&TensorInfo, Vec<f32>) -> Result<()>,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut used = std::collections::HashSet::new();
    for info in &g.tensors {
        if !matches!(info.kind, TensorKind::Param { .. } | TensorKind::State) {
            continue;
        }
        let file_name = rename(&info.name);
        match weights.get(&file_name)? {
            Some((shape, mut values)) => {
                let resampled = (info.name == "pos_embed" && shape != info.shape)
                    .then(|| super::vit::resample_pos_embed(&values, &shape, &info.shape))
                    .flatten();
                if let Some(v) = resampled {
                    log::warn!(
                        "'{}': position embedding {shape:?} resampled to {:?} for this input size (bicubic with \
                         antialiasing, as timm does)",
                        weights.origin(),
                        info.shape
                    );
                    values = v;
                } else if !same_layout(&shape, &info.shape) {
                    return Err(Error::Invalid(format!(
                        "'{}': tensor '{file_name}' has shape {shape:?}, the model expects {:?} for '{}'",
                        weights.origin(),
                        info.shape,
                        info.name
                    )));
                }
                each(info, values)?;
                used.insert(file_name);
                report.loaded.push(info.name.clone());
            }
            None if may_miss(&info.name) => report.kept_initial.push(info.name.clone()),
            None => {
                return Err(Error::Invalid(format!(
                    "'{}' has no tensor '{file_name}' (shape {:?}) that the model needs for '{}'",
                    weights.origin(),
                    info.shape,
                    info.name
                )))
            }
        }
    }
    for (name, shape) in weights.shapes()? {
        if used.contains(&name) {
            continue;
        }
        if may_ignore(&name) {
            report.ignored.push(name);
        } else {
            return Err(Error::Invalid(format!(
                "'{}' has a tensor '{name}' {shape:?} that the model does not use (wrong architecture?)",
                weights.origin()
            )));
        }
    }
    Ok(report)
}

/// Write every parameter and running statistic of the executor to `path` with `metadata`, atomically: a temporary
/// file in the same directory, then a rename, so a crash never leaves a half-written model behind.
#[cfg(not(target_arch = "wasm32"))]
pub fn save(ex: &Executor, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
    write_atomically(path, &ex.model_tensors()?, metadata)
}

/// Write f32 tensors (name, shape, values) and metadata to a safetensors file, atomically (temporary file in
/// the same directory, then rename).
pub fn write_atomically(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = to_bytes(tensors, metadata, &path.display().to_string())?;
    write_bytes_atomically(path, &bytes)
}

/// f32 tensors (name, shape, values) and metadata as the bytes of a safetensors file (`origin` names it in
/// errors): what [`write_atomically`] writes, and what a web page offers for download.
pub fn to_bytes(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
    origin: &str,
) -> Result<Vec<u8>> {
    let bytes: Vec<&[u8]> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::Invalid(format!("cannot serialize '{origin}': {e}")))?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Invalid(format!("cannot serialize '{origin}': {e}")))
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::Invalid(format!("cannot write '{}': {e}", path.display())))
    })
}

/// `write` fills a temporary file next to `path`, which is then renamed over it; whatever fails, the temporary
/// file does not stay behind.
fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let written = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| Error::Invalid(format!("cannot write '{}': {e}", path.display())))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The hidden temp file next to `path` that atomic writes go through before the rename.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
