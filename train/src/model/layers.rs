//! Transformer building blocks with OpenAI CLIP's parameter names.

use std::cell::Cell;
use tch::{Kind, Tensor, nn};

/// `nn.LayerNorm` (eps 1e-5) with `weight`/`bias`.
pub fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![width],
        nn::LayerNormConfig {
            eps: 1e-5,
            ..Default::default()
        },
    )
}

thread_local! {
    static BF16_PRODUCTS: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the model's weight products (every linear layer and projection, on
/// this thread) in bfloat16 when `on`: inputs and weights rounded to bf16, products
/// accumulated in fp32 by the kernel, results back in fp32; layer norms, softmax,
/// attention, losses and the fp32 master weights are untouched. CPU mixed precision
/// (`--amp` on a CPU): on CPUs with AVX512-BF16 or AMX, oneDNN's bf16 products run
/// about 4x faster than fp32 ones (tiny-preset shapes). The autograd graph records
/// the casts, so `backward()` needs no flag of its own.
pub fn with_bf16_products<T>(on: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16_PRODUCTS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(BF16_PRODUCTS.with(|c| c.replace(on)));
    f()
}

fn bf16_products(x: &Tensor) -> bool {
    x.kind() == Kind::Float && BF16_PRODUCTS.with(Cell::get)
}

/// `x W^T + b` (torch's `linear`; W is [out, in]), in bf16 under [`with_bf16_products`].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    if bf16_products(x) {
        let h = Kind::BFloat16;
        x.to_kind(h)
            .linear(&w.to_kind(h), b.map(|b| b.to_kind(h)))
            .to_kind(Kind::Float)
    } else {
        x.linear(w, b)
    }
}

/// An `nn::Linear` through [`linear`].
pub fn apply_linear(x: &Tensor, l: &nn::Linear) -> Tensor {
    linear(x, &l.ws, l.bs.as_ref())
}

/// `x P` for a projection P [in, out], in bf16 under [`with_bf16_products`].
pub fn project(x: &Tensor, p: &Tensor) -> Tensor {
    if bf16_products(x) {
        let h = Kind::BFloat16;
        x.to_kind(h).matmul(&p.to_kind(h)).to_kind(Kind::Float)
    } else {
        x.matmul(p)
    }
}

/// QuickGELU: `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> Tensor {
    x * (x * 1.702).sigmoid()
}

/// Scaled dot-product attention over heads, then the heads merged and projected:
/// q [B, H, Lq, D], k/v [B, H, Lk, D] -> [B, Lq, H*D] through `out`.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, out: &nn::Linear) -> Tensor {
    let (b, h, lq, d) = q.size4().expect("[B, H, Lq, D]");
    let o = Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, causal, None, false); // [B, H, Lq, D]
    apply_linear(&o.transpose(1, 2).contiguous().view([b, lq, h * d]), out)
}

/// `nn.MultiheadAttention` as CLIP stores it: packed `in_proj_weight` [3W, W]
/// (rows q; k; v), `in_proj_bias` [3W], `out_proj.{weight,bias}`.
#[derive(Debug)]
pub struct MultiheadAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    heads: i64,
}

/// CLIP's normal initialisation of a transformer's blocks, which IRRA's and SEN's
/// `init_weights` also give their randomly initialised cross-modal decoders: attention
/// input projections N(0, W^-1/2), output projections N(0, W^-1/2 (2 L)^-1/2), the
/// MLP's first layer N(0, (2 W)^-1/2) and its second N(0, W^-1/2 (2 L)^-1/2); the
/// attention biases start at zero (torch's `MultiheadAttention`), the MLP's keep
/// `nn.Linear`'s uniform default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipInit {
    pub attn_std: f64,
    pub proj_std: f64,
    pub fc_std: f64,
}

impl ClipInit {
    /// For a transformer of `width` and `layers` blocks.
    pub fn for_transformer(width: i64, layers: i64) -> Self {
        let scale = (width as f64).powf(-0.5);
        ClipInit {
            attn_std: scale,
            proj_std: scale * (2.0 * layers as f64).powf(-0.5),
            fc_std: (2.0 * width as f64).powf(-0.5),
        }
    }

    fn normal(stdev: f64) -> nn::Init {
        nn::Init::Randn { mean: 0.0, stdev }
    }

    /// A linear layer with N(0, `stdev`) weights and zero bias.
    fn linear(p: nn::Path, i: i64, o: i64, stdev: f64) -> nn::Linear {
        nn::linear(
            p,
            i,
            o,
            nn::LinearConfig {
                ws_init: Self::normal(stdev),
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        )
    }
}

impl MultiheadAttention {
    pub fn new(p: nn::Path, width: i64, heads: i64) -> Self {
        Self::with_init(p, width, heads, None)
    }

    /// `init`: CLIP's normal initialisation; `None`: torch's `MultiheadAttention`
    /// default (xavier-uniform input projection).
    pub fn with_init(p: nn::Path, width: i64, heads: i64, init: Option<ClipInit>) -> Self {
        let bound = (6.0 / (width as f64 * 4.0)).sqrt(); // xavier_uniform over [3W, W]
        let in_init = match init {
            Some(c) => ClipInit::normal(c.attn_std),
            None => nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        };
        MultiheadAttention {
            in_proj_weight: p.var("in_proj_weight", &[3 * width, width], in_init),
            in_proj_bias: p.zeros("in_proj_bias", &[3 * width]),
            out_proj: match init {
                Some(c) => ClipInit::linear(&p / "out_proj", width, width, c.proj_std),
                None => nn::linear(&p / "out_proj", width, width, Default::default()),
            },
            heads,
        }
    }

    /// Self-attention. x: [B, L, W] -> [B, L, W]; `causal` masks future positions.
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, l, w) = x.size3().expect("[B, L, W]");
        let qkv = linear(x, &self.in_proj_weight, Some(&self.in_proj_bias)); // [B, L, 3W]
        let hd = w / self.heads;
        let qkv = qkv.view([b, l, 3, self.heads, hd]).permute([2, 0, 3, 1, 4]); // [3, B, H, L, D]
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        attend(&q, &k, &v, causal, &self.out_proj)
    }

    /// Self-attention answered for the first token only: x [B, L, W] -> [B, 1, W],
    /// equal to `forward(x, false).narrow(1, 0, 1)` without projecting queries or
    /// outputs for the other L - 1 tokens.
    pub fn forward_first(&self, x: &Tensor) -> Tensor {
        let (b, l, w) = x.size3().expect("[B, L, W]");
        let hd = w / self.heads;
        let q = linear(
            &x.narrow(1, 0, 1),
            &self.in_proj_weight.narrow(0, 0, w),
            Some(&self.in_proj_bias.narrow(0, 0, w)),
        ); // [B, 1, W]
        let kv = linear(
            x,
            &self.in_proj_weight.narrow(0, w, 2 * w),
            Some(&self.in_proj_bias.narrow(0, w, 2 * w)),
        ); // [B, L, 2W]
        let kv = kv.view([b, l, 2, self.heads, hd]).permute([2, 0, 3, 1, 4]); // [2, B, H, L, D]
        let q = q.view([b, 1, self.heads, hd]).transpose(1, 2); // [B, H, 1, D]
        attend(&q, &kv.get(0), &kv.get(1), false, &self.out_proj)
    }
}

/// CLIP's `ResidualAttentionBlock`: pre-LN attention and MLP (4x or `mlp_width`, QuickGELU).
#[derive(Debug)]
pub struct ResidualAttentionBlock {
    ln_1: nn::LayerNorm,
    attn: MultiheadAttention,
    ln_2: nn::LayerNorm,
    c_fc: nn::Linear,
    c_proj: nn::Linear,
}

impl ResidualAttentionBlock {
    pub fn new(p: nn::Path, width: i64, heads: i64, mlp_width: i64) -> Self {
        Self::with_init(p, width, heads, mlp_width, None)
    }

    /// `init`: CLIP's normal initialisation of the weights (see [`ClipInit`]).
    pub fn with_init(
        p: nn::Path,
        width: i64,
        heads: i64,
        mlp_width: i64,
        init: Option<ClipInit>,
    ) -> Self {
        let mlp = |name: &str, i: i64, o: i64, stdev: Option<f64>| {
            let ws_init = match stdev {
                Some(s) => ClipInit::normal(s),
                None => nn::LinearConfig::default().ws_init,
            };
            let cfg = nn::LinearConfig {
                ws_init,
                ..Default::default()
            };
            nn::linear(&p / "mlp" / name, i, o, cfg)
        };
        ResidualAttentionBlock {
            ln_1: layer_norm(&p / "ln_1", width),
            attn: MultiheadAttention::with_init(&p / "attn", width, heads, init),
            ln_2: layer_norm(&p / "ln_2", width),
            c_fc: mlp("c_fc", width, mlp_width, init.map(|c| c.fc_std)),
            c_proj: mlp("c_proj", mlp_width, width, init.map(|c| c.proj_std)),
        }
    }

    /// x: [B, L, W] -> [B, L, W].
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attn.forward(&x.apply(&self.ln_1), causal);
        self.mlp_residual(x)
    }

    /// The block's output at the first token only (non-causal): [B, L, W] -> [B, 1, W].
    pub fn forward_first(&self, x: &Tensor) -> Tensor {
        let x = x.narrow(1, 0, 1) + self.attn.forward_first(&x.apply(&self.ln_1));
        self.mlp_residual(x)
    }

    fn mlp_residual(&self, x: Tensor) -> Tensor {
        let h = apply_linear(
            &quick_gelu(&apply_linear(&x.apply(&self.ln_2), &self.c_fc)),
            &self.c_proj,
        );
        x + h
    }
}

/// `transformer.resblocks.{i}`.
#[derive(Debug)]
pub struct Transformer {
    blocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    pub fn new(p: nn::Path, width: i64, layers: i64, heads: i64, mlp_width: i64) -> Self {
        let r = &p / "resblocks";
        Transformer {
            blocks: (0..layers)
                .map(|i| ResidualAttentionBlock::new(&r / i, width, heads, mlp_width))
                .collect(),
        }
    }

    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(x.shallow_clone(), |x, b| b.forward(&x, causal))
    }

    /// The output at the first token only (non-causal): [B, L, W] -> [B, 1, W]. Every
    /// block but the last runs whole; the last answers for token 0 alone.
    pub fn forward_first(&self, x: &Tensor) -> Tensor {
        let Some((last, rest)) = self.blocks.split_last() else {
            return x.narrow(1, 0, 1);
        };
        let x = rest
            .iter()
            .fold(x.shallow_clone(), |x, b| b.forward(&x, false));
        last.forward_first(&x)
    }
}

/// Cross-attention with separate projections: queries of width `width` attend to
/// keys/values of width `kv_width` (TIR decoder: image tokens attend to text tokens).
#[derive(Debug)]
pub struct CrossAttention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl CrossAttention {
    pub fn new(p: nn::Path, width: i64, kv_width: i64, heads: i64) -> Self {
        Self::with_init(p, width, kv_width, heads, None)
    }

    /// `init`: as torch's `MultiheadAttention` under CLIP's normal initialisation
    /// (query/key/value N(0, attn_std), output N(0, proj_std), biases zero).
    pub fn with_init(
        p: nn::Path,
        width: i64,
        kv_width: i64,
        heads: i64,
        init: Option<ClipInit>,
    ) -> Self {
        if let Some(c) = init {
            return CrossAttention {
                q: ClipInit::linear(&p / "q_proj", width, width, c.attn_std),
                k: ClipInit::linear(&p / "k_proj", kv_width, width, c.attn_std),
                v: ClipInit::linear(&p / "v_proj", kv_width, width, c.attn_std),
                out: ClipInit::linear(&p / "out_proj", width, width, c.proj_std),
                heads,
            };
        }
        CrossAttention {
            q: nn::linear(&p / "q_proj", width, width, Default::default()),
            k: nn::linear(&p / "k_proj", kv_width, width, Default::default()),
            v: nn::linear(&p / "v_proj", kv_width, width, Default::default()),
            out: nn::linear(&p / "out_proj", width, width, Default::default()),
            heads,
        }
    }

    /// q: [B, Lq, W], kv: [B, Lk, Wkv] -> [B, Lq, W].
    pub fn forward(&self, q: &Tensor, kv: &Tensor) -> Tensor {
        let (b, lq, w) = q.size3().expect("[B, Lq, W]");
        let lk = kv.size()[1];
        let hd = w / self.heads;
        let split = |t: Tensor, l: i64| t.view([b, l, self.heads, hd]).transpose(1, 2);
        attend(
            &split(apply_linear(q, &self.q), lq),
            &split(apply_linear(kv, &self.k), lk),
            &split(apply_linear(kv, &self.v), lk),
            false,
            &self.out,
        )
    }
}

/// Cast helper for tests and losses.
pub fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("tensor to Vec<f64>")
}
