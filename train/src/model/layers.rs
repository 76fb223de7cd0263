//! Transformer building blocks with OpenAI CLIP's parameter names.

use tch::{Kind, Tensor, nn, nn::Module};

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

/// QuickGELU: `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> Tensor {
    x * (x * 1.702).sigmoid()
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

impl MultiheadAttention {
    pub fn new(p: nn::Path, width: i64, heads: i64) -> Self {
        let bound = (6.0 / (width as f64 * 4.0)).sqrt(); // xavier_uniform over [3W, W]
        MultiheadAttention {
            in_proj_weight: p.var(
                "in_proj_weight",
                &[3 * width, width],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            in_proj_bias: p.zeros("in_proj_bias", &[3 * width]),
            out_proj: nn::linear(&p / "out_proj", width, width, Default::default()),
            heads,
        }
    }

    /// Self-attention. x: [B, L, W] -> [B, L, W]; `causal` masks future positions.
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, l, w) = x.size3().expect("[B, L, W]");
        let qkv = x.matmul(&self.in_proj_weight.tr()) + &self.in_proj_bias; // [B, L, 3W]
        let hd = w / self.heads;
        let qkv = qkv.view([b, l, 3, self.heads, hd]).permute([2, 0, 3, 1, 4]); // [3, B, H, L, D]
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        ); // [B, H, L, D]
        self.out_proj
            .forward(&o.transpose(1, 2).contiguous().view([b, l, w]))
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
        ResidualAttentionBlock {
            ln_1: layer_norm(&p / "ln_1", width),
            attn: MultiheadAttention::new(&p / "attn", width, heads),
            ln_2: layer_norm(&p / "ln_2", width),
            c_fc: nn::linear(&p / "mlp" / "c_fc", width, mlp_width, Default::default()),
            c_proj: nn::linear(&p / "mlp" / "c_proj", mlp_width, width, Default::default()),
        }
    }

    /// x: [B, L, W] -> [B, L, W].
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attn.forward(&x.apply(&self.ln_1), causal);
        let h = quick_gelu(&x.apply(&self.ln_2).apply(&self.c_fc)).apply(&self.c_proj);
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
        let o = Tensor::scaled_dot_product_attention(
            &split(q.apply(&self.q), lq),
            &split(kv.apply(&self.k), lk),
            &split(kv.apply(&self.v), lk),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        o.transpose(1, 2)
            .contiguous()
            .view([b, lq, w])
            .apply(&self.out)
    }
}

/// Cast helper for tests and losses.
pub fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("tensor to Vec<f64>")
}
