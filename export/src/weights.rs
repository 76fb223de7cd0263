//! A checkpoint's `model.safetensors` as float32 tensors by name (read directly: the
//! exporter does not link libtorch).

use crate::ExportError;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Weights {
    path: PathBuf,
    tensors: BTreeMap<String, (Vec<i64>, Vec<f32>)>,
}

impl Weights {
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        let bytes = std::fs::read(path).map_err(|e| ExportError::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, ExportError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            ExportError::Input(format!("{}: not a safetensors file: {e}", path.display()))
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(ExportError::Input(format!(
                        "{}: tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16",
                        path.display()
                    )));
                }
            };
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(ExportError::Input(format!(
                    "{}: tensor `{name}` has a non-finite value at element {bad}; the checkpoint is damaged",
                    path.display()
                )));
            }
            let shape = view.shape().iter().map(|&d| d as i64).collect();
            tensors.insert(name, (shape, values));
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensor `name`, which must have `shape` (the config's sizes).
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<&[f32], ExportError> {
        let (s, v) = self.tensors.get(name).ok_or_else(|| {
            ExportError::Input(format!(
                "{}: tensor `{name}` is missing; is this a SEN checkpoint of the config in config.json?",
                self.path.display()
            ))
        })?;
        if s != shape {
            return Err(ExportError::Input(format!(
                "{}: tensor `{name}` has shape {s:?}, but config.json implies {shape:?}",
                self.path.display()
            )));
        }
        Ok(v)
    }
}
