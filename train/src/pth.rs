//! State dicts from the files PyTorch training code writes, without Python: a
//! zip-format `torch.save` (`<name>/data.pkl` read by [`sen_core::torch_pickle`],
//! tensors from the `<name>/data/<key>` records), or a safetensors file.
//!
//! A checkpoint of the authors' code is `{"model": state_dict, "optimizer": ...,
//! "scheduler": ..., "epoch": ...}`; the state dict is taken from `model` (or
//! `state_dict`), or is the file itself when every top-level value is a tensor. Only
//! the storages the state dict uses are read (an Adam state doubles a file's size).

use anyhow::{Context, Result, bail};
use sen_core::torch_pickle::{self, DType, Obj, TensorRef};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use tch::{Kind, Tensor};

/// A state dict as the file holds it.
pub struct StateDict {
    /// Tensors in the file's order, in their stored element type.
    pub tensors: Vec<(String, Tensor)>,
    /// Entries of the state dict that are not tensors: (name, what they are).
    pub other: Vec<(String, String)>,
    /// Where the state dict was: `model`, `state_dict`, or `` (the whole file).
    pub container: String,
    /// The file's top-level keys (a torch.save of a dict), for the record.
    pub top_level: Vec<String>,
    /// `torch` (zip pickle) or `safetensors`.
    pub format: &'static str,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// `torch.save(..., _use_new_zipfile_serialization=False)`: a raw pickle stream whose
/// first object is the legacy magic number.
const LEGACY_START: &[u8] = b"\x80\x02\x8a\x0a";

/// Read the state dict of `path` (zip `torch.save` or safetensors).
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let mut head = [0u8; 16];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    let head = &head[..n];
    if head.starts_with(ZIP_MAGIC) {
        return read_zip(path);
    }
    if head.len() > 8 && head[8] == b'{' {
        let tensors = Tensor::read_safetensors(path)
            .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
        return Ok(StateDict {
            tensors,
            other: vec![],
            container: String::new(),
            top_level: vec![],
            format: "safetensors",
        });
    }
    if head.starts_with(LEGACY_START) {
        bail!(
            "{}: a legacy (pre-1.6) torch.save stream; sen reads the zip format: load and \
             re-save it with torch.save(torch.load(f), f2) under PyTorch >= 1.6",
            path.display()
        );
    }
    bail!(
        "{}: neither a zip-format torch.save checkpoint nor safetensors (it starts with {:02x?})",
        path.display(),
        &head[..head.len().min(8)]
    )
}

fn read_zip(path: &Path) -> Result<StateDict> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow::anyhow!(
            "{}: a damaged or truncated zip ({e}); copy the checkpoint again",
            path.display()
        )
    })?;
    let pkl = zip
        .file_names()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{}: a zip without data.pkl: not a torch.save checkpoint (a TorchScript \
                 archive is imported with import-clip)",
                path.display()
            )
        })?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Some(order) = read_record(&mut zip, path, &format!("{prefix}byteorder"), false)?
        && order != b"little"
    {
        bail!(
            "{}: saved on a {} -endian machine; sen reads little-endian checkpoints",
            path.display(),
            String::from_utf8_lossy(&order)
        );
    }
    let bytes = read_record(&mut zip, path, &pkl, true)?.expect("required");
    let p = torch_pickle::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {pkl}: {e}", path.display()))?;
    let root = p.root();
    let top_level: Vec<String> = p
        .str_entries(root)
        .map(|e| e.into_iter().map(|(k, _)| k.to_string()).collect())
        .unwrap_or_default();
    let is_tensor = |id| matches!(p.get(id), Obj::Tensor(_));
    let (container, dict) = match ["model", "state_dict"]
        .into_iter()
        .find_map(|k| p.dict_get(root, k).map(|v| (k, v)))
    {
        Some((k, v)) => (k.to_string(), v),
        None => {
            let entries = p.str_entries(root).with_context(|| {
                format!(
                    "{}: the file holds {}, not a dict",
                    path.display(),
                    p.kind(root)
                )
            })?;
            if entries.is_empty() || !entries.iter().all(|(_, v)| is_tensor(*v)) {
                bail!(
                    "{}: no state dict: no `model` or `state_dict` entry, and not every \
                     top-level value is a tensor (keys: {})",
                    path.display(),
                    top_level.join(", ")
                );
            }
            (String::new(), root)
        }
    };
    let entries = p.str_entries(dict).with_context(|| {
        format!(
            "{}: `{container}` is {}, not a dict",
            path.display(),
            p.kind(dict)
        )
    })?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = vec![];
    let mut other = vec![];
    for (name, id) in entries {
        let Obj::Tensor(t) = p.get(id) else {
            other.push((name.to_string(), p.kind(id)));
            continue;
        };
        let storage = match storages.get(&t.storage.key) {
            Some(s) => s.shallow_clone(),
            None => {
                let s = read_storage(&mut zip, path, &prefix, t)?;
                storages.insert(t.storage.key.clone(), s.shallow_clone());
                s
            }
        };
        let view = tensor_view(&storage, t)
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        tensors.push((name.to_string(), view));
    }
    Ok(StateDict {
        tensors,
        other,
        container,
        top_level,
        format: "torch",
    })
}

fn read_record<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    required: bool,
) -> Result<Option<Vec<u8>>> {
    let mut f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) if !required => return Ok(None),
        Err(e) => bail!("{}: record {name}: {e}", path.display()),
    };
    let mut buf = Vec::with_capacity(f.size().min(1 << 32) as usize);
    f.read_to_end(&mut buf).with_context(|| {
        format!(
            "{}: reading record {name} (truncated file?)",
            path.display()
        )
    })?;
    Ok(Some(buf))
}

fn kind(d: DType) -> Kind {
    match d {
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

/// One storage record as a flat tensor of its element type.
fn read_storage<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    path: &Path,
    prefix: &str,
    t: &TensorRef,
) -> Result<Tensor> {
    let name = format!("{prefix}data/{}", t.storage.key);
    let bytes = read_record(zip, path, &name, true)?.expect("required");
    let want = t.storage.numel as u128 * t.storage.dtype.size() as u128;
    if bytes.len() as u128 != want {
        bail!(
            "{}: record {name} has {} bytes, its storage needs {want} ({} x {:?}): truncated or damaged",
            path.display(),
            bytes.len(),
            t.storage.numel,
            t.storage.dtype
        );
    }
    Ok(Tensor::f_from_data_size(
        &bytes,
        &[t.storage.numel as i64],
        kind(t.storage.dtype),
    )?)
}

/// The strided view a pickled tensor describes, as a contiguous tensor of its own.
fn tensor_view(storage: &Tensor, t: &TensorRef) -> Result<Tensor> {
    let size: Vec<i64> = t.size.iter().map(|v| *v as i64).collect();
    let stride: Vec<i64> = t.stride.iter().map(|v| *v as i64).collect();
    Ok(storage
        .f_as_strided(&size, &stride, Some(t.offset as i64))?
        .f_contiguous()?)
}
