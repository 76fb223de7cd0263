//! Tagger accuracy on hand-tagged pedestrian descriptions (`fixtures/pos_gold.txt`,
//! written before the tagger). `-- --nocapture` prints the figures and every miss.

use sen_core::text::pos::{Tagger, kept_by_pruning};

#[test]
fn tagger_accuracy_on_hand_tagged_descriptions() {
    let gold = include_str!("fixtures/pos_gold.txt");
    let (mut n, mut right, mut keep_right, mut sentences) = (0usize, 0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    for line in gold
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        sentences += 1;
        let pairs: Vec<(String, String)> = line
            .split_whitespace()
            .map(|wt| {
                let (w, t) = wt.rsplit_once('/').unwrap();
                (w.to_string(), t.to_string())
            })
            .collect();
        let words: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
        let got = Tagger::get().tag_tokens(&words);
        for ((w, want), g) in pairs.iter().zip(&got) {
            n += 1;
            if &g.tag == want {
                right += 1;
            } else {
                misses.push(format!("{w}/{want} tagged {}", g.tag));
            }
            if kept_by_pruning(&g.tag) == kept_by_pruning(want) {
                keep_right += 1;
            }
        }
    }
    let acc = right as f64 / n as f64;
    let keep_acc = keep_right as f64 / n as f64;
    println!(
        "{sentences} sentences, {n} tokens: tag accuracy {:.2}%, keep/drop accuracy {:.2}%\nmisses: {}",
        100.0 * acc,
        100.0 * keep_acc,
        misses.join("; ")
    );
    assert!(sentences >= 30);
    assert!(acc >= 0.95, "tag accuracy {acc}");
    assert!(keep_acc >= 0.98, "keep/drop accuracy {keep_acc}");
}
