//! Shared by the cross-crate tests (`mod common;`).

use sen_core::ModelConfig;
use sen_train::model::Sen;
use std::path::Path;
use tch::{Device, nn};

/// A model of the tiny preset's architecture with every tensor perturbed (so a swapped
/// LayerNorm weight/bias or a wrong transpose cannot hide behind 1s and 0s), saved as a
/// trainer checkpoint with TIR and ID head (which the export must leave out).
pub fn checkpoint(cfg: &ModelConfig, dir: &Path, seed: i64) -> (nn::VarStore, Sen) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Sen::new(&vs.root(), cfg, Some(11), true);
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            let noise = t.randn_like() * 0.05;
            let _ = t.g_add_(&noise);
        }
    });
    sen_train::checkpoint::save(
        dir,
        &vs,
        cfg,
        &serde_json::json!({}),
        &serde_json::json!({}),
        |_| Ok(()),
    )
    .unwrap();
    (vs, model)
}
