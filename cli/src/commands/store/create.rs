//! `sen store create`.

use anyhow::Result;
use sen_core::Manifest;
use sen_store::{Storage, Store, StoreConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    dir: PathBuf,
    /// The bundle whose image encoder the store is bound to.
    #[arg(long)]
    bundle: PathBuf,
    /// Store embeddings as float16 (half the memory and scan traffic).
    #[arg(long)]
    f16: bool,
    /// Keep no crops (image bytes), only embeddings and metadata.
    #[arg(long)]
    no_crops: bool,
}

pub fn run(a: CreateArgs) -> Result<()> {
    let m = Manifest::load(&a.bundle)?;
    let store = Store::create(&a.dir, &store_config(&m, a.f16, !a.no_crops)?)?;
    let i = store.info();
    println!(
        "created store {} ({}): {}-dim {} rows{}, image encoder {}",
        a.dir.display(),
        i.uuid,
        i.dim,
        if a.f16 { "f16" } else { "f32" },
        if i.crops { " with crops" } else { ", no crops" },
        i.image_encoder_sha256
    );
    Ok(())
}

/// The store settings for a bundle.
pub fn store_config(m: &Manifest, f16: bool, crops: bool) -> Result<StoreConfig> {
    Ok(StoreConfig {
        image_encoder_sha256: m.encoder_digest(&m.io.image)?,
        preprocess: m.preprocess.clone(),
        dim: m.model.embed_dim,
        dtype: if f16 { Storage::F16 } else { Storage::F32 },
        crops,
        bundle_precision: m.precision.to_string(),
    })
}
