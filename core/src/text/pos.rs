//! An offline English part-of-speech tagger (Penn Treebank tags) for pruning
//! augmentation (SPEC §4).
//!
//! Brill's transformation-based tagger (Brill 1992), with the lexicon,
//! morphological rules and contextual rules of Brill's tagger v1.14 as distributed
//! by the Pattern library (BSD licence, University of Antwerp; `core/data/pos/`).
//! The algorithm follows Pattern's `find_tags` without its statistical model:
//! 1. known words take their lexicon tag (a sentence's first word is also looked up
//!    lower-cased);
//! 2. unknown words: capitalised -> NNP, number-like -> CD, else NN refined by the
//!    morphological rules (suffixes, prefixes, lexicon look-ups);
//! 3. contextual rules rewrite tags from neighbouring words and tags.
//!
//! `sen-lexicon.txt` adds pedestrian-description vocabulary the 1992 lexicon tags
//! by its newswire sense (colours and shades as adjectives, garments as nouns),
//! and `sen-context.txt` two rules for garment phrases; both were written for sen.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

static LEXICON_GZ: &[u8] = include_bytes!("../../data/pos/en-lexicon.txt.gz");
static MORPHOLOGY: &str = include_str!("../../data/pos/en-morphology.txt");
static CONTEXT: &str = include_str!("../../data/pos/en-context.txt");
static SEN_LEXICON: &str = include_str!("../../data/pos/sen-lexicon.txt");
static SEN_CONTEXT: &str = include_str!("../../data/pos/sen-context.txt");

/// A token and its Penn Treebank tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub word: String,
    pub tag: String,
}

pub struct Tagger {
    lexicon: HashMap<String, String>,
    morphology: Vec<Vec<String>>,
    context: Vec<Vec<String>>,
}

fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(";;;") && !l.starts_with('#'))
}

impl Tagger {
    /// The shared tagger (data decoded once per process).
    pub fn get() -> &'static Tagger {
        static T: OnceLock<Tagger> = OnceLock::new();
        T.get_or_init(Tagger::load)
    }

    fn load() -> Tagger {
        let mut raw = String::new();
        flate2::read::GzDecoder::new(LEXICON_GZ)
            .read_to_string(&mut raw)
            .expect("embedded lexicon is valid gzip");
        let mut lexicon = HashMap::with_capacity(100_000);
        for line in data_lines(&raw).chain(data_lines(SEN_LEXICON)) {
            let mut it = line.split(' ');
            if let (Some(w), Some(t)) = (it.next(), it.next()) {
                lexicon.insert(w.to_string(), t.to_string());
            }
        }
        let rules = |s: &str| {
            data_lines(s)
                .map(|l| l.split_whitespace().map(String::from).collect())
                .collect()
        };
        let mut context: Vec<Vec<String>> = rules(CONTEXT);
        context.extend(rules(SEN_CONTEXT));
        Tagger {
            lexicon,
            morphology: rules(MORPHOLOGY),
            context,
        }
    }

    /// Tag a tokenised sentence.
    pub fn tag_tokens(&self, tokens: &[String]) -> Vec<Tagged> {
        let mut tags: Vec<Option<String>> = tokens
            .iter()
            .enumerate()
            .map(|(i, w)| {
                self.lexicon
                    .get(w)
                    .or_else(|| {
                        if i == 0 {
                            self.lexicon.get(&w.to_lowercase())
                        } else {
                            None
                        }
                    })
                    .cloned()
            })
            .collect();
        for i in 0..tokens.len() {
            if tags[i].is_some() {
                continue;
            }
            let w = &tokens[i];
            let tag = if is_title(w) {
                "NNP".to_string()
            } else if is_cd(w) {
                "CD".to_string()
            } else {
                let prev = if i > 0 {
                    Some(tokens[i - 1].as_str())
                } else {
                    None
                };
                let next = tokens.get(i + 1).map(String::as_str);
                self.morphology_apply(w, "NN", prev, next)
            };
            tags[i] = Some(tag);
        }
        let tagged: Vec<(String, String)> = tokens
            .iter()
            .cloned()
            .zip(tags.into_iter().map(|t| t.unwrap()))
            .collect();
        self.context_apply(tagged)
            .into_iter()
            .map(|(word, tag)| Tagged { word, tag })
            .collect()
    }

    /// Tokenise and tag a sentence.
    pub fn tag(&self, text: &str) -> Vec<Tagged> {
        self.tag_tokens(&tokenize(text))
    }

    fn morphology_apply(
        &self,
        w: &str,
        default: &str,
        prev: Option<&str>,
        next: Option<&str>,
    ) -> String {
        let mut tag = default.to_string();
        let known = |s: &str| self.lexicon.contains_key(s);
        for r in &self.morphology {
            // "ly hassuf 2 RB x" or, conditioned on the current tag, "NN s fhassuf 1 NNS x".
            let (conditional, x, cmd) = if r.len() >= 4 && is_cmd(&r[1]) {
                (false, r[0].as_str(), r[1].to_lowercase())
            } else if r.len() >= 5 && is_cmd(&r[2]) {
                (
                    true,
                    r[1].as_str(),
                    r[2].to_lowercase().trim_start_matches('f').to_string(),
                )
            } else {
                continue;
            };
            if conditional && tag != r[0] {
                continue;
            }
            let pos = &r[r.len() - 2];
            let hit = match cmd.as_str() {
                "word" => x == w,
                "char" => w.contains(x),
                "haspref" => w.starts_with(x),
                "hassuf" => w.ends_with(x),
                "addpref" => known(&format!("{x}{w}")),
                "addsuf" => known(&format!("{w}{x}")),
                "deletepref" => w.strip_prefix(x).is_some_and(known),
                "deletesuf" => w.strip_suffix(x).is_some_and(known),
                // Pattern's naming: goodleft compares the next word, goodright the previous.
                "goodleft" => next == Some(x),
                "goodright" => prev == Some(x),
                _ => false,
            };
            if hit {
                tag = pos.clone();
            }
        }
        tag
    }

    fn context_apply(&self, tokens: Vec<(String, String)>) -> Vec<(String, String)> {
        const PAD: &str = "STAART";
        let n = tokens.len();
        let mut t: Vec<(String, String)> = Vec::with_capacity(n + 6);
        t.extend(std::iter::repeat_n((PAD.to_string(), PAD.to_string()), 3));
        t.extend(tokens);
        t.extend(std::iter::repeat_n((PAD.to_string(), PAD.to_string()), 3));
        for i in 3..3 + n {
            // Rules test the tag this position had when its turn came (Pattern keeps
            // the old token object while it rewrites t[i]).
            let orig = t[i].1.clone();
            for r in &self.context {
                if r.len() < 4 || (orig != r[0] && r[0] != "*") {
                    continue;
                }
                let (x, y) = (r[3].as_str(), r.get(4).map(String::as_str).unwrap_or(""));
                let tag = |k: isize| t[(i as isize + k) as usize].1.as_str();
                let wd = |k: isize| t[(i as isize + k) as usize].0.as_str();
                let hit = match r[2].to_lowercase().as_str() {
                    "prevtag" => x == tag(-1),
                    "nexttag" => x == tag(1),
                    "prev2tag" => x == tag(-2),
                    "next2tag" => x == tag(2),
                    "prev1or2tag" => x == tag(-1) || x == tag(-2),
                    "next1or2tag" => x == tag(1) || x == tag(2),
                    "prev1or2or3tag" => x == tag(-1) || x == tag(-2) || x == tag(-3),
                    "next1or2or3tag" => x == tag(1) || x == tag(2) || x == tag(3),
                    "surroundtag" => x == tag(-1) && y == tag(1),
                    "curwd" => x == wd(0),
                    "prevwd" => x == wd(-1),
                    "nextwd" => x == wd(1),
                    "prev1or2wd" => x == wd(-1) || x == wd(-2),
                    "next1or2wd" => x == wd(1) || x == wd(2),
                    "prevwdtag" => x == wd(-1) && y == tag(-1),
                    "nextwdtag" => x == wd(1) && y == tag(1),
                    "wdprevtag" => x == tag(-1) && y == wd(0),
                    "wdnexttag" => x == wd(0) && y == tag(1),
                    "wdand2aft" => x == wd(0) && y == wd(2),
                    "wdand2tagbfr" => x == tag(-2) && y == wd(0),
                    "wdand2tagaft" => x == wd(0) && y == tag(2),
                    "lbigram" => x == wd(-1) && y == wd(0),
                    "rbigram" => x == wd(0) && y == wd(1),
                    "prevbigram" => x == tag(-2) && y == tag(-1),
                    "nextbigram" => x == tag(1) && y == tag(2),
                    _ => false,
                };
                if hit {
                    t[i].1 = r[1].clone();
                }
            }
        }
        t.drain(3..3 + n).collect()
    }
}

fn is_cmd(s: &str) -> bool {
    let s = s.to_lowercase();
    let s = s.strip_prefix('f').unwrap_or(&s);
    matches!(
        s,
        "word"
            | "char"
            | "haspref"
            | "hassuf"
            | "addpref"
            | "addsuf"
            | "deletepref"
            | "deletesuf"
            | "goodleft"
            | "goodright"
    )
}

/// Python's `str.istitle()` for one word: an upper-case letter starts every run of letters.
fn is_title(w: &str) -> bool {
    let mut prev_cased = false;
    let mut any = false;
    for c in w.chars() {
        if c.is_uppercase() {
            if prev_cased {
                return false;
            }
            prev_cased = true;
            any = true;
        } else if c.is_lowercase() {
            if !prev_cased {
                return false;
            }
            prev_cased = true;
        } else {
            prev_cased = false;
        }
    }
    any
}

/// Pattern's `CD = ^[0-9\-\,\.\:\/\%\$]+$`.
fn is_cd(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_digit() || "-,.:/%$".contains(c))
}

/// Split a sentence into words and punctuation: leading/trailing punctuation becomes
/// its own token, English contractions are split (`he's` -> `he 's`, `don't` -> `do n't`),
/// hyphenated words (`t-shirt`) stay whole.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let chars: Vec<char> = raw.chars().collect();
        let is_p = |c: char| !c.is_alphanumeric() && c != '\'' && c != '-' && c != '$' && c != '%';
        let mut start = 0;
        let mut end = chars.len();
        let mut trailing = Vec::new();
        while start < end && (is_p(chars[start]) || (chars[start] == '\'' && start + 1 < end)) {
            out.push(chars[start].to_string());
            start += 1;
        }
        while end > start && (is_p(chars[end - 1]) || chars[end - 1] == '\'') {
            trailing.push(chars[end - 1].to_string());
            end -= 1;
        }
        if start < end {
            let word: String = chars[start..end].iter().collect();
            let lower = word.to_lowercase();
            let split_at = if lower.ends_with("n't") && lower.len() > 3 {
                Some(word.len() - 3)
            } else {
                ["'s", "'re", "'ve", "'ll", "'d", "'m"]
                    .iter()
                    .find(|s| lower.ends_with(*s) && lower.len() > s.len())
                    .map(|s| word.len() - s.len())
            };
            match split_at {
                Some(k) => {
                    out.push(word[..k].to_string());
                    out.push(word[k..].to_string());
                }
                None => out.push(word),
            }
        }
        out.extend(trailing.into_iter().rev());
    }
    out
}

/// Penn tags that pruning keeps: nouns, adjectives and pronouns (possessives included).
pub fn kept_by_pruning(tag: &str) -> bool {
    tag.starts_with("NN") || tag.starts_with("JJ") || tag.starts_with("PRP")
}

/// The pruned form of a caption (SPEC §4): its nouns, adjectives and pronouns, in
/// order, joined by spaces. An empty result falls back to the original caption.
pub fn prune(caption: &str) -> String {
    let kept: Vec<String> = Tagger::get()
        .tag(caption)
        .into_iter()
        .filter(|t| kept_by_pruning(&t.tag))
        .map(|t| t.word)
        .collect();
    if kept.is_empty() {
        caption.to_string()
    } else {
        kept.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_splits_punctuation_and_contractions() {
        assert_eq!(
            tokenize("He's wearing a t-shirt, (red) and isn't happy."),
            vec![
                "He", "'s", "wearing", "a", "t-shirt", ",", "(", "red", ")", "and", "is", "n't",
                "happy", "."
            ]
        );
        assert_eq!(tokenize("  "), Vec::<String>::new());
    }

    #[test]
    fn python_istitle_semantics() {
        assert!(is_title("John"));
        assert!(is_title("O'Neil"));
        assert!(!is_title("iPhone"));
        assert!(!is_title("USA"));
        assert!(!is_title("123"));
    }

    #[test]
    fn pruning_keeps_nouns_adjectives_pronouns() {
        assert_eq!(
            prune("She is wearing a red coat and her black boots."),
            "She red coat her black boots"
        );
    }
}
