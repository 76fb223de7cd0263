//! The text-guided image restoration decoder (`tir.*`, training only; SPEC §4).

use super::layers::{ClipInit, CrossAttention, ResidualAttentionBlock, apply_linear, layer_norm};
use sen_core::config::{ModelConfig, TirConfig};
use tch::{Device, Kind, Tensor, nn};

#[derive(Debug)]
pub struct TirDecoder {
    ln_in: nn::LayerNorm,
    embed: nn::Linear,
    mask_token: Tensor,
    pos: Tensor,
    ln_q: nn::LayerNorm,
    ln_kv: nn::LayerNorm,
    cross_attn: CrossAttention,
    ln_cross: nn::LayerNorm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_out: nn::LayerNorm,
    head: nn::Linear,
}

/// MAE's 2-D sin-cos table for a (gh, gw) grid plus a zero CLS row: [1 + gh*gw, dim].
/// The first half of the dimensions encodes the column, the second half the row.
pub fn sincos_2d(dim: i64, gh: i64, gw: i64) -> Tensor {
    assert!(
        dim % 4 == 0,
        "sin-cos position embedding needs a width divisible by 4, got {dim}"
    );
    let half = dim / 2;
    let quarter = half / 2;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut out = vec![0f32; ((1 + gh * gw) * dim) as usize];
    for r in 0..gh {
        for c in 0..gw {
            let row = (1 + r * gw + c) as usize * dim as usize;
            for (k, &o) in omega.iter().enumerate() {
                let q = quarter as usize;
                out[row + k] = (c as f64 * o).sin() as f32;
                out[row + q + k] = (c as f64 * o).cos() as f32;
                out[row + 2 * q + k] = (r as f64 * o).sin() as f32;
                out[row + 3 * q + k] = (r as f64 * o).cos() as f32;
            }
        }
    }
    Tensor::from_slice(&out).view([1 + gh * gw, dim])
}

impl TirDecoder {
    pub fn new(p: nn::Path, cfg: &ModelConfig, device: Device) -> Self {
        let t: &TirConfig = &cfg.tir;
        let (w, d) = (t.width as i64, cfg.embed_dim as i64);
        let (gh, gw) = cfg.vision.grid();
        let patch = cfg.vision.patch_size as i64;
        // As SEN's code: the cross-attention and the decoder blocks get CLIP's normal
        // initialisation for a transformer of the decoder's width and depth, and the
        // mask token starts at zero (`torch.zeros`, never re-initialised).
        let init = Some(ClipInit::for_transformer(w, t.layers as i64));
        TirDecoder {
            ln_in: layer_norm(&p / "ln_in", d),
            embed: nn::linear(&p / "embed", d, w, Default::default()),
            mask_token: p.var("mask_token", &[w], nn::Init::Const(0.0)),
            pos: sincos_2d(w, gh as i64, gw as i64).to_device(device),
            ln_q: layer_norm(&p / "ln_q", w),
            ln_kv: layer_norm(&p / "ln_kv", d),
            cross_attn: CrossAttention::with_init(&p / "cross_attn", w, d, t.heads as i64, init),
            ln_cross: layer_norm(&p / "ln_cross", w),
            blocks: (0..t.layers as i64)
                .map(|i| {
                    ResidualAttentionBlock::with_init(
                        &p / "blocks" / i,
                        w,
                        t.heads as i64,
                        t.mlp_width as i64,
                        init,
                    )
                })
                .collect(),
            ln_out: layer_norm(&p / "ln_out", w),
            head: nn::linear(&p / "head", w, patch * patch * 3, Default::default()),
        }
    }

    /// visible: [B, K, D] (CLS first, then the kept patches in `keep` order),
    /// keep: [B, K-1] patch indices, text: [B, L, D] all token features of the paired
    /// caption -> per-patch pixel predictions [B, N, patch*patch*3].
    pub fn forward(&self, visible: &Tensor, keep: &Tensor, text: &Tensor) -> Tensor {
        let x = apply_linear(&visible.apply(&self.ln_in), &self.embed); // [B, K, W]
        let (b, _, w) = x.size3().unwrap();
        let n = self.pos.size()[0] - 1;
        let full = self
            .mask_token
            .view([1, 1, w])
            .expand([b, n, w], true)
            .contiguous();
        let idx = keep.unsqueeze(-1).expand([b, keep.size()[1], w], true);
        // Under autocast the embedded tokens may be fp16 while the mask token is fp32.
        let visible_patches = x.narrow(1, 1, x.size()[1] - 1).to_kind(full.kind());
        let full = full.scatter(1, &idx, &visible_patches);
        let x = x.to_kind(full.kind());
        let x = Tensor::cat(&[x.narrow(1, 0, 1), full], 1) + self.pos.to_device(x.device()); // [B, 1+N, W]
        let x = self
            .cross_attn
            .forward(&x.apply(&self.ln_q), &text.apply(&self.ln_kv))
            .apply(&self.ln_cross);
        let x = self.blocks.iter().fold(x, |x, blk| blk.forward(&x, false));
        let y = apply_linear(&x.apply(&self.ln_out), &self.head);
        y.narrow(1, 1, n)
    }
}

/// Cut normalised images into patches, each flattened (row, column, channel):
/// [B, 3, H, W] -> [B, N, p*p*3].
pub fn patchify(images: &Tensor, p: i64) -> Tensor {
    let (b, c, h, w) = images.size4().unwrap();
    let (gh, gw) = (h / p, w / p);
    images
        .view([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, gh * gw, p * p * c])
}

/// 0.2989 R + 0.5870 G + 0.1140 B, repeated to 3 channels.
pub fn grayscale(images: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&[0.2989f32, 0.5870, 0.1140])
        .to_device(images.device())
        .view([1, 3, 1, 1]);
    (images * w)
        .sum_dim_intlist(1, true, Kind::Float)
        .expand([-1, 3, -1, -1], true)
}

/// Per-sample random masking: keep `kept - 1` of `n` patches (CLS is always kept).
/// Returns (keep indices [B, kept-1], mask [B, N] with 1 = masked). The noise is drawn
/// on the CPU generator whatever the device, so CPU and CUDA runs mask alike.
pub fn random_masking(b: i64, n: i64, kept: i64, device: Device) -> (Tensor, Tensor) {
    let noise = Tensor::rand([b, n], (Kind::Float, Device::Cpu)).to_device(device);
    let order = noise.argsort(1, false);
    let keep = order.narrow(1, 0, kept - 1);
    let mask = Tensor::ones([b, n], (Kind::Float, device)).scatter_value(1, &keep, 0.0);
    (keep, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::to_f64_vec;

    fn std_of(t: &Tensor) -> f64 {
        let v = to_f64_vec(&t.flatten(0, -1));
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
    }

    /// SEN's decoder initialisation (its `build.py`): mask token zeros; for a decoder
    /// of width W and L blocks, attention inputs N(0, W^-1/2), attention outputs and
    /// the MLP's second layer N(0, W^-1/2 (2L)^-1/2), its first layer N(0, (2W)^-1/2),
    /// attention biases zero.
    #[test]
    fn decoder_starts_as_sens() {
        let cfg = ModelConfig::vit_b16();
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(3);
        let _dec = TirDecoder::new(&vs.root() / "tir", &cfg, Device::Cpu);
        let v = vs.variables();
        let (w, l) = (cfg.tir.width as f64, cfg.tir.layers as f64);
        let attn = w.powf(-0.5);
        let proj = attn * (2.0 * l).powf(-0.5);
        let fc = (2.0 * w).powf(-0.5);
        assert!(to_f64_vec(&v["tir.mask_token"]).iter().all(|&x| x == 0.0));
        let close = |name: &str, want: f64| {
            let got = std_of(&v[name]);
            assert!(
                (got / want - 1.0).abs() < 0.03,
                "{name}: std {got}, SEN's init gives {want}"
            );
        };
        for b in 0..cfg.tir.layers {
            close(&format!("tir.blocks.{b}.attn.in_proj_weight"), attn);
            close(&format!("tir.blocks.{b}.attn.out_proj.weight"), proj);
            close(&format!("tir.blocks.{b}.mlp.c_fc.weight"), fc);
            close(&format!("tir.blocks.{b}.mlp.c_proj.weight"), proj);
            for bias in ["attn.in_proj_bias", "attn.out_proj.bias"] {
                let t = &v[&format!("tir.blocks.{b}.{bias}")];
                assert!(to_f64_vec(t).iter().all(|&x| x == 0.0), "{bias}");
            }
        }
        for p in ["q", "k", "v"] {
            close(&format!("tir.cross_attn.{p}_proj.weight"), attn);
            assert!(
                to_f64_vec(&v[&format!("tir.cross_attn.{p}_proj.bias")])
                    .iter()
                    .all(|&x| x == 0.0)
            );
        }
        close("tir.cross_attn.out_proj.weight", proj);
    }
}
