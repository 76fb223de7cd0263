//! The SEN model: CLIP ViT image encoder + CLIP text encoder (shared by all losses),
//! the TIR decoder and the ID classifier (training only). Parameter paths equal
//! OpenAI CLIP's names; the decoder lives under `tir.`, the classifier under `id_head.`.

pub mod layers;
pub mod text;
pub mod tir;
pub mod vision;

use sen_core::ModelConfig;
use tch::{Tensor, nn};

pub use text::{TextTransformer, pool_eot, trim_to_eot};
pub use tir::TirDecoder;
pub use vision::VisionTransformer;

#[derive(Debug)]
pub struct Sen {
    pub cfg: ModelConfig,
    pub visual: VisionTransformer,
    pub text: TextTransformer,
    pub tir: Option<TirDecoder>,
    pub id_head: Option<nn::Linear>,
}

impl Sen {
    /// Build under `root` (a VarStore root). `num_classes` adds the ID head; `tir`
    /// adds the TIR decoder. Deployment needs neither.
    pub fn new(root: &nn::Path, cfg: &ModelConfig, num_classes: Option<i64>, tir: bool) -> Self {
        let d = cfg.embed_dim as i64;
        Sen {
            cfg: cfg.clone(),
            visual: VisionTransformer::new(root / "visual", &cfg.vision, d),
            text: TextTransformer::new(root, &cfg.text, d),
            tir: tir.then(|| TirDecoder::new(root / "tir", cfg, root.device())),
            id_head: num_classes.map(|n| {
                nn::linear(
                    root / "id_head",
                    d,
                    n,
                    nn::LinearConfig {
                        ws_init: nn::Init::Randn {
                            mean: 0.0,
                            stdev: 0.001,
                        },
                        bs_init: Some(nn::Init::Const(0.0)),
                        bias: true,
                    },
                )
            }),
        }
    }

    /// Global image features (unnormalised): [B, 3, H, W] -> [B, D].
    pub fn encode_image(&self, images: &Tensor) -> Tensor {
        self.visual.forward_global(images)
    }

    /// Global text features (unnormalised): ids [B, L], eot [B] -> [B, D].
    pub fn encode_text(&self, ids: &Tensor, eot: &Tensor) -> Tensor {
        self.text.forward_global(ids, eot)
    }
}
