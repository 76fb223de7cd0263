//! Write a seeded random-weight checkpoint of a preset (for timing and for tools that
//! take a checkpoint): `cargo run --release -p sen-export --example random_checkpoint --
//! vit-b16 OUT_DIR [SEED]`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(preset), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: random_checkpoint PRESET OUT_DIR [SEED]");
        std::process::exit(2);
    };
    let seed = args
        .get(2)
        .map_or(Ok(1), |s| s.parse())
        .unwrap_or_else(|e| {
            eprintln!("SEED: {e}");
            std::process::exit(2)
        });
    let cfg = sen_core::ModelConfig::preset(preset).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    if let Err(e) = sen_export::fixtures::random_checkpoint(&cfg, std::path::Path::new(out), seed) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!("wrote a random {preset} checkpoint (seed {seed}) to {out}");
}
