//! Benchmark datasets (SPEC §6): CUHK-PEDES, ICFG-PEDES and RSTPReid loaders,
//! training samples, test sets and statistics.
//!
//! Each benchmark is one JSON list of records (`split`, `id`, an image path,
//! `captions`) next to an `imgs/` folder that the paths are relative to. Errors
//! name the annotation file, the record index and the field.

pub mod pipeline;
pub mod sampler;

use crate::error::CoreError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The three benchmark formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum DatasetFormat {
    #[serde(rename = "cuhk-pedes")]
    CuhkPedes,
    #[serde(rename = "icfg-pedes")]
    IcfgPedes,
    #[serde(rename = "rstpreid")]
    Rstpreid,
}

impl DatasetFormat {
    pub const ALL: [DatasetFormat; 3] = [
        DatasetFormat::CuhkPedes,
        DatasetFormat::IcfgPedes,
        DatasetFormat::Rstpreid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::CuhkPedes => "cuhk-pedes",
            DatasetFormat::IcfgPedes => "icfg-pedes",
            DatasetFormat::Rstpreid => "rstpreid",
        }
    }
    /// The annotation file beside `imgs/`.
    pub fn annotation_file(self) -> &'static str {
        match self {
            DatasetFormat::CuhkPedes => "reid_raw.json",
            DatasetFormat::IcfgPedes => "ICFG-PEDES.json",
            DatasetFormat::Rstpreid => "data_captions.json",
        }
    }
    /// The record field holding the image path.
    pub fn path_field(self) -> &'static str {
        match self {
            DatasetFormat::Rstpreid => "img_path",
            _ => "file_path",
        }
    }
}

impl std::str::FromStr for DatasetFormat {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        DatasetFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "unknown dataset format {s:?}; expected cuhk-pedes, icfg-pedes or rstpreid"
                ))
            })
    }
}

impl std::fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                CoreError::Invalid(format!("unknown split {s:?}; expected train, val or test"))
            })
    }
}

/// One annotation record: an image of one identity with its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub split: Split,
    /// The identity as written in the file.
    pub id: i64,
    /// Path relative to `imgs/`, as written in the file.
    pub image: String,
    pub captions: Vec<String>,
}

/// A loaded benchmark.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub format: DatasetFormat,
    pub records: Vec<Record>,
}

/// Training data: one sample per caption, pids contiguous from 0.
#[derive(Debug, Clone)]
pub struct TrainSet {
    pub images: Vec<PathBuf>,
    /// (pid, index into `images`, caption).
    pub samples: Vec<TrainSample>,
    /// Original id -> contiguous pid (recorded in `train.json`).
    pub pid_map: BTreeMap<i64, usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSample {
    pub pid: usize,
    pub image: usize,
    pub caption: String,
}

impl TrainSet {
    pub fn num_pids(&self) -> usize {
        self.pid_map.len()
    }
}

/// Evaluation data (IRRA protocol): every image of the split is the gallery, every
/// caption a query; pids are the ids as written in the file.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub images: Vec<PathBuf>,
    pub image_pids: Vec<i64>,
    pub captions: Vec<String>,
    pub caption_pids: Vec<i64>,
}

/// Per-split statistics (`sen dataset stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SplitStats {
    pub identities: usize,
    pub images: usize,
    pub captions: usize,
    pub mean_caption_words: f64,
    pub missing_files: usize,
}

impl Dataset {
    /// Find the format from the annotation file present in `root`.
    pub fn detect(root: &Path) -> Result<DatasetFormat, CoreError> {
        let found: Vec<DatasetFormat> = DatasetFormat::ALL
            .into_iter()
            .filter(|f| root.join(f.annotation_file()).is_file())
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(CoreError::format(
                root,
                "no annotation file found (expected reid_raw.json, ICFG-PEDES.json or data_captions.json); \
                 pass --format if it is named differently",
            )),
            many => Err(CoreError::format(
                root,
                format!(
                    "several annotation files found ({}); pass --format to choose",
                    many.iter()
                        .map(|f| f.annotation_file())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Load `root` in `format` (detected when `None`).
    pub fn load(root: &Path, format: Option<DatasetFormat>) -> Result<Self, CoreError> {
        let format = match format {
            Some(f) => f,
            None => Self::detect(root)?,
        };
        let path = root.join(format.annotation_file());
        let bytes = std::fs::read(&path).map_err(|e| CoreError::io(&path, e))?;
        let records = parse_records(&bytes, format, &path)?;
        Ok(Dataset {
            root: root.to_path_buf(),
            format,
            records,
        })
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("imgs")
    }

    pub fn image_path(&self, r: &Record) -> PathBuf {
        self.images_dir().join(&r.image)
    }

    pub fn split(&self, split: Split) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.split == split)
    }

    /// Every image path of `split` that is not a file (all of them, found up front).
    pub fn missing_files(&self, split: Option<Split>) -> Vec<PathBuf> {
        use rayon::prelude::*;
        self.records
            .par_iter()
            .filter(|r| split.is_none_or(|s| r.split == s))
            .map(|r| self.image_path(r))
            .filter(|p| !p.is_file())
            .collect()
    }

    /// Training samples (one per caption) with pids remapped to 0..N-1 in order of
    /// first appearance of each id, ascending. Refuses missing images, listing them.
    pub fn train_set(&self) -> Result<TrainSet, CoreError> {
        self.check_files(Split::Train)?;
        let mut ids: Vec<i64> = self.split(Split::Train).map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Err(CoreError::format(
                self.annotation_path(),
                "the train split is empty",
            ));
        }
        let pid_map: BTreeMap<i64, usize> =
            ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut images = Vec::new();
        let mut samples = Vec::new();
        for r in self.split(Split::Train) {
            let image = images.len();
            images.push(self.image_path(r));
            for c in &r.captions {
                samples.push(TrainSample {
                    pid: pid_map[&r.id],
                    image,
                    caption: c.clone(),
                });
            }
        }
        Ok(TrainSet {
            images,
            samples,
            pid_map,
        })
    }

    /// The evaluation set of `split`. Refuses missing images, listing them.
    pub fn eval_set(&self, split: Split) -> Result<EvalSet, CoreError> {
        self.check_files(split)?;
        let mut s = EvalSet {
            images: vec![],
            image_pids: vec![],
            captions: vec![],
            caption_pids: vec![],
        };
        for r in self.split(split) {
            s.images.push(self.image_path(r));
            s.image_pids.push(r.id);
            for c in &r.captions {
                s.captions.push(c.clone());
                s.caption_pids.push(r.id);
            }
        }
        if s.images.is_empty() {
            return Err(CoreError::format(
                self.annotation_path(),
                format!(
                    "the {} split is empty in this {} dataset",
                    split.name(),
                    self.format
                ),
            ));
        }
        Ok(s)
    }

    pub fn annotation_path(&self) -> PathBuf {
        self.root.join(self.format.annotation_file())
    }

    fn check_files(&self, split: Split) -> Result<(), CoreError> {
        let missing = self.missing_files(Some(split));
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        Err(CoreError::format(
            self.annotation_path(),
            format!(
                "{} image file(s) of the {} split are missing under {} (first: {}{})",
                missing.len(),
                split.name(),
                self.images_dir().display(),
                shown.join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            ),
        ))
    }

    /// Statistics per split (splits absent from the file are left out).
    pub fn stats(&self) -> BTreeMap<Split, SplitStats> {
        let mut out = BTreeMap::new();
        for split in Split::ALL {
            let recs: Vec<&Record> = self.split(split).collect();
            if recs.is_empty() {
                continue;
            }
            let mut ids: Vec<i64> = recs.iter().map(|r| r.id).collect();
            ids.sort_unstable();
            ids.dedup();
            let captions: usize = recs.iter().map(|r| r.captions.len()).sum();
            let words: usize = recs
                .iter()
                .flat_map(|r| &r.captions)
                .map(|c| c.split_whitespace().count())
                .sum();
            out.insert(
                split,
                SplitStats {
                    identities: ids.len(),
                    images: recs.len(),
                    captions,
                    mean_caption_words: if captions > 0 {
                        words as f64 / captions as f64
                    } else {
                        0.0
                    },
                    missing_files: self.missing_files(Some(split)).len(),
                },
            );
        }
        out
    }
}

/// Parse the annotation JSON: a list of objects. `path` names the file in errors.
fn parse_records(
    bytes: &[u8],
    format: DatasetFormat,
    path: &Path,
) -> Result<Vec<Record>, CoreError> {
    use serde_json::Value;
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| CoreError::format(path, format!("not valid JSON: {e}")))?;
    let Value::Array(items) = doc else {
        return Err(CoreError::format(
            path,
            "expected a JSON list of records at the top level",
        ));
    };
    let bad = |i: usize, field: &str, what: &str| {
        CoreError::format(path, format!("record {i}: field `{field}` {what}"))
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| CoreError::format(path, format!("record {i}: not an object")))?;
        let split_txt = obj
            .get("split")
            .ok_or_else(|| bad(i, "split", "is missing"))?;
        let split_txt = split_txt
            .as_str()
            .ok_or_else(|| bad(i, "split", "is not a string"))?;
        let split = match split_txt {
            "train" => Split::Train,
            "val" => Split::Val,
            "test" => Split::Test,
            other => {
                return Err(bad(
                    i,
                    "split",
                    &format!("is {other:?}; expected train, val or test"),
                ));
            }
        };
        let id = match obj.get("id") {
            None => return Err(bad(i, "id", "is missing")),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| bad(i, "id", "is not an integer"))?,
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| bad(i, "id", &format!("{s:?} is not an integer")))?,
            Some(_) => return Err(bad(i, "id", "is not an integer")),
        };
        let pf = format.path_field();
        let image = obj
            .get(pf)
            .ok_or_else(|| bad(i, pf, "is missing"))?
            .as_str()
            .ok_or_else(|| bad(i, pf, "is not a string"))?;
        if image.is_empty()
            || Path::new(image).is_absolute()
            || image.split(['/', '\\']).any(|c| c == "..")
        {
            return Err(bad(
                i,
                pf,
                &format!("{image:?} must be a relative path inside imgs/"),
            ));
        }
        let caps = obj
            .get("captions")
            .ok_or_else(|| bad(i, "captions", "is missing"))?;
        let caps = caps
            .as_array()
            .ok_or_else(|| bad(i, "captions", "is not a list"))?;
        let mut captions = Vec::with_capacity(caps.len());
        for (j, c) in caps.iter().enumerate() {
            let c = c
                .as_str()
                .ok_or_else(|| bad(i, "captions", &format!("entry {j} is not a string")))?;
            if c.trim().is_empty() {
                return Err(bad(i, "captions", &format!("entry {j} is empty")));
            }
            captions.push(c.to_string());
        }
        if captions.is_empty() {
            return Err(bad(i, "captions", "is an empty list"));
        }
        out.push(Record {
            split,
            id,
            image: image.to_string(),
            captions,
        });
    }
    if out.is_empty() {
        return Err(CoreError::format(path, "no records"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
