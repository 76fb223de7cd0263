//! CLIP ViT image encoder (`visual.*`), IRRA variant: projected features for every token.

use super::layers::{Transformer, layer_norm, project};
use sen_core::config::VisionConfig;
use tch::{Kind, Tensor, nn, nn::Module};

#[derive(Debug)]
pub struct VisionTransformer {
    conv1: nn::Conv2D,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: nn::LayerNorm,
    transformer: Transformer,
    ln_post: nn::LayerNorm,
    proj: Tensor,
    patch: i64,
}

impl VisionTransformer {
    pub fn new(p: nn::Path, cfg: &VisionConfig, embed_dim: i64) -> Self {
        let w = cfg.width as i64;
        let scale = (w as f64).powf(-0.5);
        VisionTransformer {
            conv1: nn::conv2d(
                &p / "conv1",
                3,
                w,
                cfg.patch_size as i64,
                nn::ConvConfig {
                    stride: cfg.patch_size as i64,
                    bias: false,
                    ..Default::default()
                },
            ),
            class_embedding: p.var(
                "class_embedding",
                &[w],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            ),
            positional_embedding: p.var(
                "positional_embedding",
                &[cfg.num_tokens() as i64, w],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            ),
            ln_pre: layer_norm(&p / "ln_pre", w),
            transformer: Transformer::new(
                &p / "transformer",
                w,
                cfg.layers as i64,
                cfg.heads as i64,
                4 * w,
            ),
            ln_post: layer_norm(&p / "ln_post", w),
            proj: p.var(
                "proj",
                &[w, embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            ),
            patch: cfg.patch_size as i64,
        }
    }

    /// Patch embeddings plus their position rows: [B, N, W].
    fn patches(&self, x: &Tensor) -> Tensor {
        let x = self.conv1.forward(x); // [B, W, gh, gw]
        let x = x.flatten(2, 3).transpose(1, 2); // [B, N, W]
        x + self
            .positional_embedding
            .narrow(0, 1, self.positional_embedding.size()[0] - 1)
    }

    fn cls(&self, b: i64) -> Tensor {
        (&self.class_embedding + self.positional_embedding.get(0))
            .view([1, 1, -1])
            .expand([b, 1, -1], true)
    }

    fn encode(&self, x: Tensor) -> Tensor {
        let x = self.transformer.forward(&x.apply(&self.ln_pre), false);
        project(&x.apply(&self.ln_post), &self.proj)
    }

    /// Every token, projected: [B, 3, H, W] -> [B, 1 + N, D]. Token 0 is the global feature.
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let p = self.patches(images);
        let b = p.size()[0];
        self.encode(Tensor::cat(&[self.cls(b), p], 1))
    }

    /// The global (CLS) feature alone: [B, 3, H, W] -> [B, D], equal to
    /// `forward(images).select(1, 0)`; the last block computes queries, attention
    /// output and MLP for CLS only (a sixth of its work), which is all training's
    /// global losses and evaluation need.
    pub fn forward_global(&self, images: &Tensor) -> Tensor {
        let p = self.patches(images);
        let b = p.size()[0];
        let x = Tensor::cat(&[self.cls(b), p], 1).apply(&self.ln_pre);
        let cls = self.transformer.forward_first(&x).select(1, 0);
        project(&cls.apply(&self.ln_post), &self.proj)
    }

    /// MAE-style masked encoding: CLS plus the patches `keep` ([B, K-1] indices into
    /// the N patches, position embedding already added) -> [B, K, D].
    pub fn forward_masked(&self, images: &Tensor, keep: &Tensor) -> Tensor {
        let p = self.patches(images);
        let (b, _, w) = p.size3().unwrap();
        let idx = keep.unsqueeze(-1).expand([b, keep.size()[1], w], true);
        let kept = p.gather(1, &idx, false);
        self.encode(Tensor::cat(&[self.cls(b), kept], 1))
    }

    pub fn patch_size(&self) -> i64 {
        self.patch
    }
}

/// Resize a CLIP position table to a new grid (SPEC §1): split off CLS, bilinear
/// (align_corners = false, no antialias) from the old square grid to (gh, gw),
/// flatten row-major, put CLS back.
pub fn resize_position_table(table: &Tensor, gh: i64, gw: i64) -> Tensor {
    let (rows, w) = table.size2().expect("[rows, width]");
    let old = ((rows - 1) as f64).sqrt() as i64;
    assert_eq!(
        old * old,
        rows - 1,
        "position table without a square grid: {rows} rows"
    );
    let cls = table.narrow(0, 0, 1);
    let grid = table
        .narrow(0, 1, rows - 1)
        .to_kind(Kind::Float)
        .view([1, old, old, w])
        .permute([0, 3, 1, 2]);
    let resized = grid.upsample_bilinear2d([gh, gw], false, None, None); // [1, W, gh, gw]
    let flat = resized.permute([0, 2, 3, 1]).reshape([gh * gw, w]);
    Tensor::cat(&[cls.to_kind(Kind::Float), flat], 0)
}
