//! A synthetic pedestrian benchmark in the CUHK-PEDES format (`sen synth`).
//!
//! An identity is a combination of 13 attributes (gender, build, hair colour and
//! length, upper garment type, colour and pattern, lower garment type and colour,
//! shoes, bag type and colour, hat). Identities come in families: a base identity
//! and up to three variants that each differ from it in exactly one attribute, so
//! many pairs are one-attribute hard negatives. Families never straddle splits.
//! Each image renders the identity with its own pose, scale, position, viewpoint
//! (front, back, side: a backpack shows as straps, a pack or a bump), lighting,
//! clutter, occlusion, blur, noise and JPEG quality; each gets two captions from
//! varied templates, synonyms, clause orders and occasional omissions.
//! Byte-for-byte deterministic per seed.

mod render;

use crate::error::CoreError;
use crate::rng::Rng;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// A named colour with its caption synonyms.
pub struct Colour {
    pub name: &'static str,
    pub rgb: [u8; 3],
    pub synonyms: &'static [&'static str],
}

pub const CLOTHES: &[Colour] = &[
    Colour {
        name: "black",
        rgb: [28, 28, 32],
        synonyms: &["black"],
    },
    Colour {
        name: "white",
        rgb: [236, 236, 232],
        synonyms: &["white"],
    },
    Colour {
        name: "grey",
        rgb: [128, 128, 130],
        synonyms: &["grey", "gray"],
    },
    Colour {
        name: "red",
        rgb: [196, 30, 36],
        synonyms: &["red", "crimson", "scarlet"],
    },
    Colour {
        name: "blue",
        rgb: [40, 100, 210],
        synonyms: &["blue", "bright blue"],
    },
    Colour {
        name: "navy",
        rgb: [22, 32, 84],
        synonyms: &["navy", "navy blue", "dark blue"],
    },
    Colour {
        name: "green",
        rgb: [36, 140, 62],
        synonyms: &["green"],
    },
    Colour {
        name: "yellow",
        rgb: [232, 204, 40],
        synonyms: &["yellow"],
    },
    Colour {
        name: "orange",
        rgb: [236, 118, 28],
        synonyms: &["orange"],
    },
    Colour {
        name: "pink",
        rgb: [238, 140, 182],
        synonyms: &["pink"],
    },
    Colour {
        name: "purple",
        rgb: [112, 46, 148],
        synonyms: &["purple", "violet"],
    },
    Colour {
        name: "brown",
        rgb: [108, 68, 38],
        synonyms: &["brown"],
    },
    Colour {
        name: "beige",
        rgb: [214, 194, 158],
        synonyms: &["beige", "khaki", "tan"],
    },
];

pub const HAIR: &[Colour] = &[
    Colour {
        name: "black",
        rgb: [20, 18, 18],
        synonyms: &["black"],
    },
    Colour {
        name: "brown",
        rgb: [92, 56, 30],
        synonyms: &["brown", "dark brown"],
    },
    Colour {
        name: "blonde",
        rgb: [222, 190, 110],
        synonyms: &["blonde", "blond", "fair"],
    },
    Colour {
        name: "grey",
        rgb: [170, 170, 170],
        synonyms: &["grey", "gray", "silver"],
    },
    Colour {
        name: "red",
        rgb: [160, 62, 26],
        synonyms: &["red", "auburn", "ginger"],
    },
];

const SHOE_COLOURS: &[usize] = &[0, 1, 11, 3, 2]; // black, white, brown, red, grey
const BAG_COLOURS: &[usize] = &[0, 11, 3, 4, 2, 1, 9, 6]; // black, brown, red, blue, grey, white, pink, green
const HAT_COLOURS: &[usize] = &[0, 1, 3, 5, 2]; // black, white, red, navy, grey
const SKIN: &[[u8; 3]] = &[
    [241, 204, 176],
    [224, 172, 128],
    [176, 120, 84],
    [110, 72, 48],
];

pub const UPPER_TYPES: &[&str] = &["t-shirt", "shirt", "jacket", "hoodie", "coat"];
pub const LOWER_TYPES: &[&str] = &["trousers", "jeans", "shorts", "skirt"];
pub const BAG_TYPES: &[&str] = &["none", "backpack", "handbag", "shoulder bag"];
pub const HAT_TYPES: &[&str] = &["none", "cap", "beanie"];
pub const BUILDS: &[&str] = &["slim", "average", "heavy"];

/// The attributes of one identity (indices into the tables above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub woman: bool,
    pub build: usize,
    pub hair_colour: usize,
    pub long_hair: bool,
    pub upper_type: usize,
    pub upper_colour: usize,
    pub striped: bool,
    pub lower_type: usize,
    pub lower_colour: usize,
    /// Index into SHOE_COLOURS.
    pub shoes: usize,
    pub bag_type: usize,
    /// Index into BAG_COLOURS (ignored when there is no bag).
    pub bag_colour: usize,
    pub hat_type: usize,
    /// Index into HAT_COLOURS (ignored when there is no hat).
    pub hat_colour: usize,
    /// Not an attribute of the description: a rendering detail kept per identity.
    pub skin: usize,
}

/// The attribute fields compared for "differs in exactly one attribute". A hat's
/// colour belongs to the `hat` attribute; a bag's colour counts only when both have one.
pub const ATTRIBUTE_NAMES: [&str; 13] = [
    "gender",
    "build",
    "hair_colour",
    "hair_length",
    "upper_type",
    "upper_colour",
    "upper_pattern",
    "lower_type",
    "lower_colour",
    "shoes",
    "bag_type",
    "bag_colour",
    "hat",
];

impl Attributes {
    fn random(rng: &mut Rng) -> Self {
        let woman = rng.chance(0.5);
        let mut a = Attributes {
            woman,
            build: rng.below(BUILDS.len()),
            hair_colour: rng.below(HAIR.len()),
            long_hair: rng.chance(if woman { 0.7 } else { 0.15 }),
            upper_type: rng.below(UPPER_TYPES.len()),
            upper_colour: rng.below(CLOTHES.len()),
            striped: rng.chance(0.2),
            lower_type: rng.below(if woman { 4 } else { 3 }),
            lower_colour: rng.below(CLOTHES.len()),
            shoes: rng.below(SHOE_COLOURS.len()),
            bag_type: rng.below(BAG_TYPES.len()),
            bag_colour: rng.below(BAG_COLOURS.len()),
            hat_type: if rng.chance(0.3) { 1 + rng.below(2) } else { 0 },
            hat_colour: rng.below(HAT_COLOURS.len()),
            skin: rng.below(SKIN.len()),
        };
        if a.bag_type == 0 {
            a.bag_colour = 0;
        }
        if a.hat_type == 0 {
            a.hat_colour = 0;
        }
        a
    }

    fn valid(&self) -> bool {
        // Skirts are drawn for women only; invisible colours are canonical.
        (self.woman || self.lower_type != 3)
            && (self.bag_type != 0 || self.bag_colour == 0)
            && (self.hat_type != 0 || self.hat_colour == 0)
    }

    /// A copy that differs in exactly attribute `field` (None if no valid change exists).
    fn mutate(&self, field: usize, rng: &mut Rng) -> Option<Self> {
        for _ in 0..20 {
            let mut b = *self;
            match field {
                0 => b.woman = !b.woman,
                1 => b.build = rng.below(BUILDS.len()),
                2 => b.hair_colour = rng.below(HAIR.len()),
                3 => b.long_hair = !b.long_hair,
                4 => b.upper_type = rng.below(UPPER_TYPES.len()),
                5 => b.upper_colour = rng.below(CLOTHES.len()),
                6 => b.striped = !b.striped,
                7 => b.lower_type = rng.below(LOWER_TYPES.len()),
                8 => b.lower_colour = rng.below(CLOTHES.len()),
                9 => b.shoes = rng.below(SHOE_COLOURS.len()),
                10 => {
                    b.bag_type = rng.below(BAG_TYPES.len());
                    b.bag_colour = if b.bag_type == 0 {
                        0
                    } else if self.bag_type == 0 {
                        rng.below(BAG_COLOURS.len())
                    } else {
                        b.bag_colour
                    };
                }
                11 => {
                    if b.bag_type == 0 {
                        return None;
                    }
                    b.bag_colour = rng.below(BAG_COLOURS.len());
                }
                _ => {
                    b.hat_type = rng.below(HAT_TYPES.len());
                    b.hat_colour = if b.hat_type == 0 {
                        0
                    } else {
                        rng.below(HAT_COLOURS.len())
                    };
                }
            }
            if b.valid() && b.differences(self) == 1 {
                return Some(b);
            }
        }
        None
    }

    /// Attribute values by name (what `attributes` holds in the JSON).
    pub fn values(&self) -> [String; 13] {
        let bag_colour = if self.bag_type == 0 {
            "none"
        } else {
            CLOTHES[BAG_COLOURS[self.bag_colour]].name
        };
        let hat = if self.hat_type == 0 {
            "none".to_string()
        } else {
            format!(
                "{} {}",
                CLOTHES[HAT_COLOURS[self.hat_colour]].name, HAT_TYPES[self.hat_type]
            )
        };
        [
            if self.woman { "woman" } else { "man" }.to_string(),
            BUILDS[self.build].to_string(),
            HAIR[self.hair_colour].name.to_string(),
            if self.long_hair { "long" } else { "short" }.to_string(),
            UPPER_TYPES[self.upper_type].to_string(),
            CLOTHES[self.upper_colour].name.to_string(),
            if self.striped { "striped" } else { "plain" }.to_string(),
            LOWER_TYPES[self.lower_type].to_string(),
            CLOTHES[self.lower_colour].name.to_string(),
            CLOTHES[SHOE_COLOURS[self.shoes]].name.to_string(),
            BAG_TYPES[self.bag_type].to_string(),
            bag_colour.to_string(),
            hat,
        ]
    }

    /// Number of attributes in which two identities differ.
    pub fn differences(&self, other: &Attributes) -> usize {
        self.values()
            .iter()
            .zip(other.values().iter())
            .filter(|(a, b)| a != b)
            .count()
    }
}

/// Count attribute differences from the `attributes` objects of two records.
pub fn attribute_differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> usize {
    ATTRIBUTE_NAMES
        .iter()
        .filter(|k| a.get(**k) != b.get(**k))
        .count()
}

#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Total identities, split 10 : 1 : 2 into train, val and test (650 -> 500/50/100).
    pub ids: usize,
    pub images_per_id: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            ids: 650,
            images_per_id: 4,
            seed: 0,
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub identities: [usize; 3],
    pub images: usize,
    pub captions: usize,
    /// Share of test identities with another test identity one attribute away.
    pub test_one_attribute_share: f64,
    pub seconds: f64,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    split: &'a str,
    id: usize,
    file_path: String,
    captions: Vec<String>,
    attributes: BTreeMap<&'static str, String>,
}

/// Draw the identities: (split index 0/1/2, attributes), in id order.
fn identities(cfg: &SynthConfig) -> Vec<(usize, Attributes)> {
    let mut rng = Rng::derive(cfg.seed, &[0x1d5]);
    let n = cfg.ids;
    let n_val = ((n as f64) / 13.0).round() as usize;
    let n_test = ((n as f64) * 2.0 / 13.0).round() as usize;
    let n_train = n - n_val - n_test;
    let targets = [n_train, n_val, n_test];
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    for (split, &target) in targets.iter().enumerate() {
        let mut made = 0;
        while made < target {
            let base = loop {
                let a = Attributes::random(&mut rng);
                if a.valid() && !seen.contains(&a.values()) {
                    break a;
                }
            };
            // Family size 1..=4: 25% / 30% / 25% / 20%.
            let u = rng.f64();
            let size = if u < 0.25 {
                1
            } else if u < 0.55 {
                2
            } else if u < 0.8 {
                3
            } else {
                4
            };
            let mut family = vec![base];
            seen.insert(base.values());
            let mut tries = 0;
            while family.len() < size && tries < 50 {
                tries += 1;
                let field = rng.below(ATTRIBUTE_NAMES.len());
                if let Some(mut v) = base
                    .mutate(field, &mut rng)
                    .filter(|v| !seen.contains(&v.values()))
                {
                    v.skin = rng.below(SKIN.len());
                    seen.insert(v.values());
                    family.push(v);
                }
            }
            for a in family {
                if made < target {
                    out.push((split, a));
                    made += 1;
                }
            }
        }
    }
    out
}

/// Generate the benchmark into `out` (`reid_raw.json` + `imgs/synth/*.jpg`).
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthReport, CoreError> {
    use rayon::prelude::*;
    if cfg.ids < 13 {
        return Err(CoreError::Invalid(format!(
            "--ids {}: need at least 13 identities for train/val/test",
            cfg.ids
        )));
    }
    if cfg.images_per_id == 0 {
        return Err(CoreError::Invalid(
            "--images-per-id must be at least 1".into(),
        ));
    }
    let t0 = std::time::Instant::now();
    let ids = identities(cfg);
    let img_dir = out.join("imgs").join("synth");
    std::fs::create_dir_all(&img_dir).map_err(|e| CoreError::io(&img_dir, e))?;
    let jobs: Vec<(usize, usize)> = (0..ids.len())
        .flat_map(|i| (0..cfg.images_per_id).map(move |k| (i, k)))
        .collect();
    let records: Vec<RecordOut> = jobs
        .par_iter()
        .map(|&(i, k)| -> Result<RecordOut, CoreError> {
            let (split, attrs) = &ids[i];
            let id = i + 1;
            let mut rng = Rng::derive(cfg.seed, &[id as u64, k as u64, 1]);
            let rel = format!("synth/{id:05}_{k}.jpg");
            let (jpeg, view) = render::render_jpeg(attrs, &mut rng);
            crate::fsutil::write_atomic(&out.join("imgs").join(&rel), &jpeg)?;
            let mut crng = Rng::derive(cfg.seed, &[id as u64, k as u64, 2]);
            let captions = (0..2).map(|_| caption(attrs, view, &mut crng)).collect();
            Ok(RecordOut {
                split: ["train", "val", "test"][*split],
                id,
                file_path: rel,
                captions,
                attributes: ATTRIBUTE_NAMES
                    .iter()
                    .copied()
                    .zip(attrs.values())
                    .collect(),
            })
        })
        .collect::<Result<_, _>>()?;
    let json = serde_json::to_vec(&records).map_err(|e| CoreError::Invalid(e.to_string()))?;
    crate::fsutil::write_atomic(&out.join("reid_raw.json"), &json)?;
    let mut counts = [0usize; 3];
    for (s, _) in &ids {
        counts[*s] += 1;
    }
    let test: Vec<&Attributes> = ids
        .iter()
        .filter(|(s, _)| *s == 2)
        .map(|(_, a)| a)
        .collect();
    let close = test
        .iter()
        .filter(|a| test.iter().any(|b| a.differences(b) == 1))
        .count();
    Ok(SynthReport {
        identities: counts,
        images: records.len(),
        captions: records.iter().map(|r| r.captions.len()).sum(),
        test_one_attribute_share: close as f64 / test.len().max(1) as f64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One caption of an identity (CUHK-PEDES style, about 15-30 words).
fn caption(a: &Attributes, view: render::View, rng: &mut Rng) -> String {
    let syn = |rng: &mut Rng, c: &Colour| -> String { rng.pick(c.synonyms).to_string() };
    let (he, his) = if a.woman {
        ("she", "her")
    } else {
        ("he", "his")
    };
    let noun = if a.woman {
        *rng.pick(&["woman", "lady", "girl", "female pedestrian"])
    } else {
        *rng.pick(&["man", "guy", "male pedestrian", "young man"])
    };
    let build = match a.build {
        0 => *rng.pick(&["slim ", "thin ", ""]),
        2 => *rng.pick(&["heavy ", "heavyset ", "stocky ", ""]),
        _ => "",
    };
    let hair = format!(
        "{} {} hair",
        if a.long_hair {
            *rng.pick(&["long", "shoulder-length", "long"])
        } else {
            *rng.pick(&["short", "cropped", "short"])
        },
        syn(rng, &HAIR[a.hair_colour])
    );
    let stripes = if a.striped {
        *rng.pick(&[" striped", " striped", " stripy"])
    } else {
        ""
    };
    let upper_noun = match a.upper_type {
        0 => *rng.pick(&["t-shirt", "tee", "short-sleeved shirt"]),
        1 => *rng.pick(&["long-sleeved shirt", "shirt", "sweater"]),
        2 => *rng.pick(&["jacket", "zip-up jacket"]),
        3 => *rng.pick(&["hoodie", "hooded sweatshirt"]),
        _ => *rng.pick(&["long coat", "coat", "overcoat"]),
    };
    let upper = format!(
        "a {}{stripes} {upper_noun}",
        syn(rng, &CLOTHES[a.upper_colour])
    );
    let lower_colour = syn(rng, &CLOTHES[a.lower_colour]);
    let lower = match a.lower_type {
        0 => format!(
            "{lower_colour} {}",
            rng.pick(&["trousers", "pants", "slacks"])
        ),
        1 => format!("{lower_colour} {}", rng.pick(&["jeans", "denim jeans"])),
        2 => format!("{lower_colour} {}", rng.pick(&["shorts", "short pants"])),
        _ => format!("a {lower_colour} {}", rng.pick(&["skirt", "short skirt"])),
    };
    let shoes = format!(
        "{} {}",
        syn(rng, &CLOTHES[SHOE_COLOURS[a.shoes]]),
        rng.pick(&["shoes", "sneakers", "shoes"])
    );
    let bag = match a.bag_type {
        0 => None,
        t => {
            let c = syn(rng, &CLOTHES[BAG_COLOURS[a.bag_colour]]);
            Some(match t {
                1 => format!("a {c} {}", rng.pick(&["backpack", "rucksack"])),
                2 => format!("a {c} {}", rng.pick(&["handbag", "hand bag", "purse"])),
                _ => format!(
                    "a {c} {}",
                    rng.pick(&["shoulder bag", "bag over one shoulder", "messenger bag"])
                ),
            })
        }
    };
    let hat = match a.hat_type {
        0 => None,
        t => {
            let c = syn(rng, &CLOTHES[HAT_COLOURS[a.hat_colour]]);
            Some(format!(
                "a {c} {}",
                if t == 1 {
                    *rng.pick(&["cap", "baseball cap"])
                } else {
                    *rng.pick(&["beanie", "knit hat"])
                }
            ))
        }
    };
    // Occasional omissions, as annotators skip details (never the upper garment).
    let keep = |rng: &mut Rng| !rng.chance(0.12);
    let hair = keep(rng).then_some(hair);
    let lower = keep(rng).then_some(lower);
    let shoes = keep(rng).then_some(shoes);
    let bag = bag.filter(|_| keep(rng));
    let hat = hat.filter(|_| keep(rng));

    let mut clothes: Vec<String> = [Some(upper.clone()), lower.clone(), shoes.clone()]
        .into_iter()
        .flatten()
        .collect();
    if rng.chance(0.3) && clothes.len() > 2 {
        clothes.swap(1, 2);
    }
    let list = join_list(&clothes);
    let cap = |s: &str| {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    let art = if rng.chance(0.5) { "A" } else { "The" };
    let subject = format!("{art} {build}{noun}");
    let mut s = match rng.below(5) {
        0 => {
            let mut s = match &hair {
                Some(h) => format!("{subject} with {h} is wearing {list}."),
                None => format!("{subject} is wearing {list}."),
            };
            if let Some(b) = &bag {
                s += &format!(" {} is carrying {b}", cap(he));
                s += &hat
                    .as_ref()
                    .map(|h| format!(" and wears {h}."))
                    .unwrap_or_else(|| ".".into());
            } else if let Some(h) = &hat {
                s += &format!(" {} also wears {h}.", cap(he));
            }
            s
        }
        1 => {
            let mut s = format!("{subject} wearing {list}.");
            if let Some(h) = &hair {
                s += &format!(" {} has {h}", cap(he));
                s += &hat
                    .as_ref()
                    .map(|x| format!(" under {x}."))
                    .unwrap_or_else(|| ".".into());
            } else if let Some(h) = &hat {
                s += &format!(" {} wears {h}.", cap(he));
            }
            if let Some(b) = &bag {
                s += &format!(" {} holds {b}.", cap(he));
            }
            s
        }
        2 => {
            let mut s = format!("This {build}{noun} is dressed in {list}");
            s += &bag
                .as_ref()
                .map(|b| format!(" and carries {b}."))
                .unwrap_or_else(|| ".".into());
            if let Some(h) = &hair {
                s += &format!(" {} {h} is visible", cap(his));
                s += &hat
                    .as_ref()
                    .map(|x| format!(" below {x}."))
                    .unwrap_or_else(|| ".".into());
            } else if let Some(h) = &hat {
                s += &format!(" {} has {h} on.", cap(he));
            }
            s
        }
        3 => {
            let mut parts = Vec::new();
            if let Some(h) = &hat {
                parts.push(h.clone());
            }
            parts.extend(clothes.iter().cloned());
            let mut s = match &hair {
                Some(h) => format!("{subject} has {h} and wears {}.", join_list(&parts)),
                None => format!("{subject} wears {}.", join_list(&parts)),
            };
            if let Some(b) = &bag {
                s += &format!(" {} has {b} with {}.", cap(he), him_her(a.woman));
            }
            s
        }
        _ => {
            let mut s = format!("{subject} in {upper}");
            s += &lower
                .as_ref()
                .map(|l| format!(" and {l}"))
                .unwrap_or_default();
            s += &bag
                .as_ref()
                .map(|b| format!(" is carrying {b}."))
                .unwrap_or_else(|| " is walking.".into());
            if let Some(sh) = &shoes {
                s += &format!(" On {his} feet {he} wears {sh}.");
            }
            if let Some(h) = &hair {
                s += &format!(" {} has {h}", cap(he));
                s += &hat
                    .as_ref()
                    .map(|x| format!(" and {x}."))
                    .unwrap_or_else(|| ".".into());
            }
            s
        }
    };
    if rng.chance(0.25) {
        s += match view {
            render::View::Front => " The person is walking towards the camera.",
            render::View::Back => " The person is walking away from the camera.",
            render::View::Side => " The person is seen from the side.",
        };
    }
    s
}

fn him_her(woman: bool) -> &'static str {
    if woman { "her" } else { "him" }
}

fn join_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_unique_split_sized_and_hard() {
        let cfg = SynthConfig {
            ids: 650,
            images_per_id: 1,
            seed: 3,
        };
        let ids = identities(&cfg);
        assert_eq!(ids.len(), 650);
        let counts = ids.iter().fold([0; 3], |mut c, (s, _)| {
            c[*s] += 1;
            c
        });
        assert_eq!(counts, [500, 50, 100]);
        let uniq: HashSet<_> = ids.iter().map(|(_, a)| a.values()).collect();
        assert_eq!(uniq.len(), 650, "identities are distinct combinations");
        assert!(ids.iter().all(|(_, a)| a.valid()));
        let test: Vec<&Attributes> = ids
            .iter()
            .filter(|(s, _)| *s == 2)
            .map(|(_, a)| a)
            .collect();
        let share = test
            .iter()
            .filter(|a| test.iter().any(|b| a.differences(b) == 1))
            .count() as f64
            / test.len() as f64;
        assert!(share >= 0.3, "one-attribute share {share}");
    }

    #[test]
    fn captions_are_cuhk_length() {
        let mut rng = Rng::new(11);
        let mut lens = Vec::new();
        for i in 0..400 {
            let a = loop {
                let a = Attributes::random(&mut rng);
                if a.valid() {
                    break a;
                }
            };
            let v = [render::View::Front, render::View::Back, render::View::Side][i % 3];
            let c = caption(&a, v, &mut rng);
            lens.push(c.split_whitespace().count());
            assert!(c.ends_with('.'), "{c}");
        }
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((15.0..=30.0).contains(&mean), "mean words {mean}");
        assert!(lens.iter().all(|&l| (8..=45).contains(&l)), "{lens:?}");
    }
}
