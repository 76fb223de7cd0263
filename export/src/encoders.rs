//! The image and text encoders of SPEC §1 as ONNX graphs, sized from the ModelConfig
//! and filled from a checkpoint's OpenAI-named tensors. By default attention is written
//! plainly in opset-17 ops (MatMul, [Add mask], Softmax, MatMul, the 1/sqrt(d) scale
//! folded into the query projection) so TensorRT's MHA fusion can match it;
//! [`Attention::Onnx23`] writes ONNX's `Attention` op instead. Weights are stored
//! pre-transposed ([in, out]) so no Transpose of a constant is left for the runtime;
//! the position table is folded into the class token and the patch embeddings.
//!
//! Two exact shortcuts (SPEC §11, as training takes them): the image encoder's last
//! block runs for the class token only (keys and values over every token; queries,
//! attention output and MLP for the class token), and the text encoder takes a dynamic
//! `sequence` axis, so a caller may trim `input_ids` to the batch's last EOT + 1 (the
//! attention is causal: later positions never reach the EOT token). Positions and the
//! causal mask come from a cumulative sum over `input_ids`, not from a Shape op (whose
//! int64 arithmetic ONNX Runtime's CUDA provider would place on the CPU). The global
//! token is picked before `ln_post`/`ln_final` and the projection (both act per token),
//! so only one row per sample is projected.

use crate::ExportError;
use crate::graph::{Builder, Compute, attr_float, attr_int, attr_ints, value_info};
use crate::proto::{GraphProto, data_type};
use crate::weights::Weights;
use sen_core::config::ModelConfig;

/// LayerNorm epsilon (SPEC §1).
const LN_EPS: f32 = 1e-5;

/// Which parts stay in float32 in an fp16 graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp32Islands {
    pub layer_norm: bool,
    pub softmax: bool,
}

/// How attention is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attention {
    /// Opset-17 ops: MatMul, [Add causal mask], Softmax, MatMul (every TensorRT 10.x
    /// and ONNX Runtime build takes it). The default.
    #[default]
    Standard,
    /// ONNX's `Attention` op (opset 23; ONNX Runtime >= 1.23 runs it), causal by
    /// attribute for the text encoder. Needs `--opset 23`.
    Onnx23,
}

impl Attention {
    pub fn name(self) -> &'static str {
        match self {
            Attention::Standard => "standard",
            Attention::Onnx23 => "onnx-attention-23",
        }
    }

    /// The lowest opset the formulation needs.
    pub fn min_opset(self) -> i64 {
        match self {
            Attention::Standard => 17,
            Attention::Onnx23 => 23,
        }
    }
}

impl std::str::FromStr for Attention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Attention::Standard),
            "onnx-attention-23" | "onnx23" => Ok(Attention::Onnx23),
            _ => Err(format!(
                "attention {s:?}: expected standard or onnx-attention-23"
            )),
        }
    }
}

/// Everything about how a graph is written (besides the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphOptions {
    pub compute: Compute,
    pub keep: Fp32Islands,
    pub attention: Attention,
    /// The text encoder takes a dynamic `sequence` axis (bundle format 2); off, the
    /// fixed-context graph of format 1 (for boxes running a sen that predates format 2).
    pub dynamic_sequence: bool,
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

struct Ctx<'a> {
    b: Builder,
    w: &'a Weights,
    opts: GraphOptions,
}

impl Ctx<'_> {
    fn compute_type(&self) -> i32 {
        self.b.compute.onnx_type()
    }

    fn weight(&mut self, name: &str, shape: &[i64]) -> Result<String, ExportError> {
        let data = self.w.get(name, shape)?;
        Ok(self.b.weight(name, shape, data))
    }

    /// A Linear's `[out, in]` weight stored as `[in, out]` for `x @ W`.
    fn linear_t(&mut self, name: &str, out: i64, inp: i64) -> Result<String, ExportError> {
        let t = transpose(self.w.get(name, &[out, inp])?, out as usize, inp as usize);
        Ok(self.b.weight(&format!("{name}.T"), &[inp, out], &t))
    }

    fn linear(&mut self, x: &str, prefix: &str, out: i64, inp: i64) -> Result<String, ExportError> {
        let wt = self.linear_t(&format!("{prefix}.weight"), out, inp)?;
        let bias = self.weight(&format!("{prefix}.bias"), &[out])?;
        let y = self.b.op("MatMul", prefix, &[x, &wt], vec![]);
        Ok(self.b.op("Add", prefix, &[&y, &bias], vec![]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str, width: i64) -> Result<String, ExportError> {
        let (wn, bn) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let f32_island = self.opts.keep.layer_norm && self.b.compute == Compute::F16;
        let (g, bias) = if f32_island {
            let g = self.w.get(&wn, &[width])?;
            let bb = self.w.get(&bn, &[width])?;
            (
                self.b.weight_f32(&wn, &[width], g),
                self.b.weight_f32(&bn, &[width], bb),
            )
        } else {
            (self.weight(&wn, &[width])?, self.weight(&bn, &[width])?)
        };
        let t = self.compute_type();
        let xin = if f32_island {
            self.b.cast(x, t, data_type::FLOAT)
        } else {
            x.to_string()
        };
        let y = self.b.op(
            "LayerNormalization",
            prefix,
            &[&xin, &g, &bias],
            vec![attr_int("axis", -1), attr_float("epsilon", LN_EPS)],
        );
        Ok(if f32_island {
            self.b.cast(&y, data_type::FLOAT, t)
        } else {
            y
        })
    }

    /// Multi-head attention of `attn.*` under `prefix`: queries from `xq` `[B, Lq, W]`,
    /// keys and values from `xkv` `[B, Lk, W]` (the same tensor for self-attention);
    /// `mask`: causal, as an additive `[B, 1, L, L]` tensor (standard) or the op's
    /// attribute (ONNX `Attention`). Returns `[B, Lq, W]` after `out_proj`.
    fn attention(
        &mut self,
        xq: &str,
        xkv: &str,
        prefix: &str,
        width: i64,
        heads: i64,
        mask: Option<&str>,
    ) -> Result<String, ExportError> {
        let hd = width / heads;
        let wu = width as usize;
        let scale = 1.0 / (hd as f32).sqrt();
        // Split the packed in_proj ([3W, W], rows q; k; v) into [in, out] weights, the
        // softmax scale folded into the query's weight and bias (the standard graph
        // then needs no Mul; ONNX `Attention` is given scale 1).
        let w_all = self
            .w
            .get(&format!("{prefix}.in_proj_weight"), &[3 * width, width])?;
        let b_all = self
            .w
            .get(&format!("{prefix}.in_proj_bias"), &[3 * width])?;
        let part = |i: usize| {
            let s = if i == 0 { scale } else { 1.0 };
            let w: Vec<f32> = transpose(&w_all[i * wu * wu..(i + 1) * wu * wu], wu, wu)
                .into_iter()
                .map(|v| v * s)
                .collect();
            let b: Vec<f32> = b_all[i * wu..(i + 1) * wu].iter().map(|v| v * s).collect();
            (w, b)
        };
        let names = ["q", "k", "v"];
        // Three [W, W] projections. (One packed [W, 3W] MatMul and a Split measured no
        // faster on ONNX Runtime's CPU provider: vit-b16 image batch 8 705 vs 720 ms.)
        let mut projected: Vec<String> = Vec::with_capacity(3);
        for (i, name) in names.iter().enumerate() {
            let (w, b) = part(i);
            let wn = self.b.weight(
                &format!("{prefix}.{name}_proj.weight.T"),
                &[width, width],
                &w,
            );
            let bn = self
                .b
                .weight(&format!("{prefix}.{name}_proj.bias"), &[width], &b);
            let p = format!("{prefix}.{name}");
            let x = if i == 0 { xq } else { xkv };
            let y = self.b.op("MatMul", &p, &[x, &wn], vec![]);
            projected.push(self.b.op("Add", &p, &[&y, &bn], vec![]));
        }
        let o = match self.opts.attention {
            Attention::Onnx23 => {
                // [B, L, W] in and out; heads and causality are attributes.
                let mut attrs = vec![
                    attr_int("q_num_heads", heads),
                    attr_int("kv_num_heads", heads),
                    attr_float("scale", 1.0),
                ];
                if mask.is_some() {
                    attrs.push(attr_int("is_causal", 1));
                }
                self.b.op(
                    "Attention",
                    prefix,
                    &[&projected[0], &projected[1], &projected[2]],
                    attrs,
                )
            }
            Attention::Standard => {
                let shape =
                    self.b
                        .const_i64(&format!("{prefix}.heads_shape"), &[4], &[0, 0, heads, hd]);
                let mut qkv = Vec::with_capacity(3);
                for (y, name) in projected.iter().zip(names) {
                    let p = format!("{prefix}.{name}");
                    let y = self.b.op("Reshape", &p, &[y, &shape], vec![]); // [B, L, H, hd]
                    let perm: &[i64] = if name == "k" {
                        &[0, 2, 3, 1]
                    } else {
                        &[0, 2, 1, 3]
                    };
                    qkv.push(
                        self.b
                            .op("Transpose", &p, &[&y], vec![attr_ints("perm", perm)]),
                    );
                }
                let mut s = self.b.op("MatMul", prefix, &[&qkv[0], &qkv[1]], vec![]); // [B, H, Lq, Lk]
                if let Some(m) = mask {
                    s = self.b.op("Add", prefix, &[&s, m], vec![]);
                }
                let t = self.compute_type();
                let f32_island = self.opts.keep.softmax && self.b.compute == Compute::F16;
                if f32_island {
                    s = self.b.cast(&s, t, data_type::FLOAT);
                }
                let mut p = self
                    .b
                    .op("Softmax", prefix, &[&s], vec![attr_int("axis", -1)]);
                if f32_island {
                    p = self.b.cast(&p, data_type::FLOAT, t);
                }
                let o = self.b.op("MatMul", prefix, &[&p, &qkv[2]], vec![]); // [B, H, Lq, hd]
                let o = self.b.op(
                    "Transpose",
                    prefix,
                    &[&o],
                    vec![attr_ints("perm", &[0, 2, 1, 3])],
                );
                let merged =
                    self.b
                        .const_i64(&format!("{prefix}.merge_shape"), &[3], &[0, 0, width]);
                self.b.op("Reshape", prefix, &[&o, &merged], vec![])
            }
        };
        self.linear(&o, &format!("{prefix}.out_proj"), width, width)
    }

    /// `resblocks.{i}`: x + attn(ln_1(x)); x + mlp(ln_2(x)) with QuickGELU. With
    /// `cls_only`, the block's output is the class token's alone ([B, 1, W]): keys and
    /// values still see every token.
    fn block(
        &mut self,
        x: &str,
        prefix: &str,
        width: i64,
        heads: i64,
        mask: Option<&str>,
        cls_only: bool,
    ) -> Result<String, ExportError> {
        let h = self.layer_norm(x, &format!("{prefix}.ln_1"), width)?;
        let (x, hq) = if cls_only {
            // The class token's row of the residual stream and of ln_1's output.
            let s0 = self
                .b
                .const_i64(&format!("{prefix}.cls_starts"), &[1], &[0]);
            let s1 = self.b.const_i64(&format!("{prefix}.cls_ends"), &[1], &[1]);
            let ax = self.b.const_i64(&format!("{prefix}.cls_axes"), &[1], &[1]);
            let mut first = |t: &str| self.b.op("Slice", prefix, &[t, &s0, &s1, &ax], vec![]); // [B, 1, W]
            (first(x), first(&h))
        } else {
            (x.to_string(), h.clone())
        };
        let a = self.attention(&hq, &h, &format!("{prefix}.attn"), width, heads, mask)?;
        let x = self.b.op("Add", prefix, &[&x, &a], vec![]);
        let h = self.layer_norm(&x, &format!("{prefix}.ln_2"), width)?;
        let mlp = 4 * width;
        let h = self.linear(&h, &format!("{prefix}.mlp.c_fc"), mlp, width)?;
        let k = self
            .b
            .weight(&format!("{prefix}.mlp.gelu_k"), &[], &[1.702]);
        let hk = self.b.op("Mul", prefix, &[&h, &k], vec![]);
        let sg = self.b.op("Sigmoid", prefix, &[&hk], vec![]);
        let h = self.b.op("Mul", prefix, &[&h, &sg], vec![]);
        let h = self.linear(&h, &format!("{prefix}.mlp.c_proj"), width, mlp)?;
        Ok(self.b.op("Add", prefix, &[&x, &h], vec![]))
    }

    /// Cast `[B, D]` to float32 (if needed) and L2-normalise rows into `out`.
    fn normalise_into(&mut self, x: &str, out: &str) {
        let t = self.compute_type();
        let x = self.b.cast(x, t, data_type::FLOAT);
        let n = self.b.op(
            "ReduceL2",
            "normalise",
            &[&x],
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        );
        let eps = self.b.weight_f32("normalise.eps", &[], &[1e-12]);
        let n = self.b.op("Max", "normalise", &[&n, &eps], vec![]);
        self.b.op_named("Div", out, &[&x, &n], vec![]);
    }
}

pub const IMAGE_INPUT: &str = "pixel_values";
pub const IMAGE_OUTPUT: &str = "image_embeds";
pub const TEXT_INPUT_IDS: &str = "input_ids";
pub const TEXT_EOT: &str = "eot_index";
pub const TEXT_OUTPUT: &str = "text_embeds";
pub const BATCH: &str = "batch";
/// The text encoder's dynamic sequence axis (bundle format 2).
pub const SEQUENCE: &str = "sequence";

/// `pixel_values` float32 [batch, 3, H, W] -> `image_embeds` float32 [batch, D], L2-normalised.
pub fn image_encoder(
    cfg: &ModelConfig,
    w: &Weights,
    opts: GraphOptions,
) -> Result<GraphProto, ExportError> {
    let v = &cfg.vision;
    let (width, p) = (v.width as i64, v.patch_size as i64);
    let (gh, gw) = (v.image_height as i64 / p, v.image_width as i64 / p);
    let n = gh * gw;
    let d = cfg.embed_dim as i64;
    let mut c = Ctx {
        b: Builder::new(opts.compute),
        w,
        opts,
    };
    let t = c.compute_type();
    let x = c.b.cast(IMAGE_INPUT, data_type::FLOAT, t);
    let conv = c.weight("visual.conv1.weight", &[width, 3, p, p])?;
    let x = c.b.op(
        "Conv",
        "visual.conv1",
        &[&x, &conv],
        vec![
            attr_ints("kernel_shape", &[p, p]),
            attr_ints("strides", &[p, p]),
        ],
    ); // [B, W, gh, gw]
    let flat = c.b.const_i64("visual.flatten_shape", &[3], &[0, width, n]);
    let x = c.b.op("Reshape", "visual", &[&x, &flat], vec![]);
    let x = c.b.op(
        "Transpose",
        "visual",
        &[&x],
        vec![attr_ints("perm", &[0, 2, 1])],
    ); // [B, N, W]
    // Fold the position table: class token + row 0, patches + rows 1..
    let pos = w.get("visual.positional_embedding", &[n + 1, width])?;
    let cls = w.get("visual.class_embedding", &[width])?;
    let cls_pos: Vec<f32> = cls
        .iter()
        .zip(&pos[..width as usize])
        .map(|(a, b)| a + b)
        .collect();
    let cls_c =
        c.b.weight("visual.class_embedding+pos0", &[1, 1, width], &cls_pos);
    let pos_rest = c.b.weight(
        "visual.positional_embedding[1:]",
        &[n, width],
        &pos[width as usize..],
    );
    let x = c.b.op("Add", "visual", &[&x, &pos_rest], vec![]);
    // Broadcast the class token to [B, 1, W] as x[:, :1, :] * 0 + cls: no Shape op,
    // whose int64 shape arithmetic ONNX Runtime's CUDA provider places on the CPU
    // (which a session without CPU fallback refuses). Exact for finite inputs.
    let s0 = c.b.const_i64("visual.cls_slice_starts", &[1], &[0]);
    let s1 = c.b.const_i64("visual.cls_slice_ends", &[1], &[1]);
    let sa = c.b.const_i64("visual.cls_slice_axes", &[1], &[1]);
    let first = c.b.op("Slice", "visual", &[&x, &s0, &s1, &sa], vec![]); // [B, 1, W]
    let zero = c.b.weight("visual.zero", &[1], &[0.0]);
    let zeros = c.b.op("Mul", "visual", &[&first, &zero], vec![]);
    let cls_b = c.b.op("Add", "visual", &[&zeros, &cls_c], vec![]);
    let mut x =
        c.b.op("Concat", "visual", &[&cls_b, &x], vec![attr_int("axis", 1)]); // [B, N+1, W]
    x = c.layer_norm(&x, "visual.ln_pre", width)?;
    for i in 0..v.layers {
        // The last block for the class token only: [B, 1, W] out.
        x = c.block(
            &x,
            &format!("visual.transformer.resblocks.{i}"),
            width,
            v.heads as i64,
            None,
            i + 1 == v.layers,
        )?;
    }
    let axes1 = c.b.const_i64("visual.axes_1", &[1], &[1]);
    let g = c.b.op("Squeeze", "visual", &[&x, &axes1], vec![]); // [B, W]
    let g = c.layer_norm(&g, "visual.ln_post", width)?;
    let proj = c.weight("visual.proj", &[width, d])?;
    let g = c.b.op("MatMul", "visual.proj", &[&g, &proj], vec![]);
    c.normalise_into(&g, IMAGE_OUTPUT);
    Ok(c.b.finish(
        "sen_image_encoder",
        vec![value_info(
            IMAGE_INPUT,
            data_type::FLOAT,
            &[
                Err(BATCH),
                Ok(3),
                Ok(v.image_height as i64),
                Ok(v.image_width as i64),
            ],
        )],
        vec![value_info(
            IMAGE_OUTPUT,
            data_type::FLOAT,
            &[Err(BATCH), Ok(d)],
        )],
    ))
}

/// `input_ids` int64 [batch, sequence] (sequence 1..=context), `eot_index` int64
/// [batch] -> `text_embeds` float32 [batch, D], L2-normalised.
pub fn text_encoder(
    cfg: &ModelConfig,
    w: &Weights,
    opts: GraphOptions,
) -> Result<GraphProto, ExportError> {
    let tc = &cfg.text;
    let (width, ctx, vocab) = (
        tc.width as i64,
        tc.context_length as i64,
        tc.vocab_size as i64,
    );
    let d = cfg.embed_dim as i64;
    let compute = opts.compute;
    let mut c = Ctx {
        b: Builder::new(compute),
        w,
        opts,
    };
    let emb = c.weight("token_embedding.weight", &[vocab, width])?;
    let x = c.b.op(
        "Gather",
        "token_embedding",
        &[&emb, TEXT_INPUT_IDS],
        vec![attr_int("axis", 0)],
    ); // [B, L, W]
    let neg = match compute {
        Compute::F32 => f32::MIN,
        Compute::F16 => half::f16::MIN.to_f32(),
    };
    // Causal mask: 0 on and below the diagonal, the most negative finite value above
    // (finite so no row can turn into NaN; exp() of it is exactly 0 after the max
    // shift). ONNX `Attention` takes causality as an attribute instead.
    let (mut x, mask) = if opts.dynamic_sequence {
        // Positions 0..L of every row: cumulative sum of ones shaped like input_ids.
        let zero = c.b.const_i64("text.zero", &[], &[0]);
        let one = c.b.const_i64("text.one", &[], &[1]);
        let ones =
            c.b.op("Mul", "text.positions", &[TEXT_INPUT_IDS, &zero], vec![]);
        let ones = c.b.op("Add", "text.positions", &[&ones, &one], vec![]);
        let axis1 = c.b.const_i64("text.axis_1", &[], &[1]);
        let pos = c.b.op("CumSum", "text.positions", &[&ones, &axis1], vec![]);
        let pos = c.b.op("Sub", "text.positions", &[&pos, &one], vec![]); // [B, L]
        let table = c.weight("positional_embedding", &[ctx, width])?;
        let pe = c.b.op(
            "Gather",
            "positional_embedding",
            &[&table, &pos],
            vec![attr_int("axis", 0)],
        );
        let x = c.b.op("Add", "text", &[&x, &pe], vec![]);
        let mask = match opts.attention {
            Attention::Onnx23 => "causal".to_string(),
            Attention::Standard => {
                // [B, 1, L, L] from the positions: row i masks every j > i.
                let a1 = c.b.const_i64("text.mask_axes_1", &[1], &[1]);
                let a2 = c.b.const_i64("text.mask_axes_2", &[1], &[2]);
                let pj = c.b.op("Unsqueeze", "text.mask", &[&pos, &a1], vec![]); // [B, 1, L]
                let pi = c.b.op("Unsqueeze", "text.mask", &[&pos, &a2], vec![]); // [B, L, 1]
                let later = c.b.op("Greater", "text.mask", &[&pj, &pi], vec![]); // [B, L, L]
                let neg = c.b.weight("text.mask_neg", &[], &[neg]);
                let zero = c.b.weight("text.mask_zero", &[], &[0.0]);
                let m = c.b.op("Where", "text.mask", &[&later, &neg, &zero], vec![]);
                c.b.op("Unsqueeze", "text.mask", &[&m, &a1], vec![]) // [B, 1, L, L]
            }
        };
        (x, mask)
    } else {
        // Format 1: the whole context, the position table and the mask constants.
        let pos = c.weight("positional_embedding", &[ctx, width])?;
        let x = c.b.op("Add", "text", &[&x, &pos], vec![]);
        let mask = match opts.attention {
            Attention::Onnx23 => "causal".to_string(),
            Attention::Standard => {
                let mask: Vec<f32> = (0..ctx)
                    .flat_map(|i| (0..ctx).map(move |j| if j > i { neg } else { 0.0 }))
                    .collect();
                c.b.weight("text.causal_mask", &[ctx, ctx], &mask)
            }
        };
        (x, mask)
    };
    for i in 0..tc.layers {
        x = c.block(
            &x,
            &format!("transformer.resblocks.{i}"),
            width,
            tc.heads as i64,
            Some(&mask),
            false,
        )?;
    }
    // The EOT token of each row: GatherElements along the sequence with the index
    // broadcast over the width (no ArgMax, no data-dependent shapes).
    let axes12 = c.b.const_i64("text.axes_1_2", &[2], &[1, 2]);
    let idx =
        c.b.op("Unsqueeze", "text.eot", &[TEXT_EOT, &axes12], vec![]); // [B, 1, 1]
    let wshape = c.b.const_i64("text.eot_expand", &[3], &[1, 1, width]);
    let idx = c.b.op("Expand", "text.eot", &[&idx, &wshape], vec![]); // [B, 1, W]
    let g = c.b.op(
        "GatherElements",
        "text.eot",
        &[&x, &idx],
        vec![attr_int("axis", 1)],
    );
    let axes1 = c.b.const_i64("text.axes_1", &[1], &[1]);
    let g = c.b.op("Squeeze", "text.eot", &[&g, &axes1], vec![]); // [B, W]
    let g = c.layer_norm(&g, "ln_final", width)?;
    let proj = c.weight("text_projection", &[width, d])?;
    let g = c.b.op("MatMul", "text_projection", &[&g, &proj], vec![]);
    c.normalise_into(&g, TEXT_OUTPUT);
    Ok(c.b.finish(
        "sen_text_encoder",
        vec![
            value_info(
                TEXT_INPUT_IDS,
                data_type::INT64,
                &[
                    Err(BATCH),
                    if opts.dynamic_sequence {
                        Err(SEQUENCE)
                    } else {
                        Ok(ctx)
                    },
                ],
            ),
            value_info(TEXT_EOT, data_type::INT64, &[Err(BATCH)]),
        ],
        vec![value_info(
            TEXT_OUTPUT,
            data_type::FLOAT,
            &[Err(BATCH), Ok(d)],
        )],
    ))
}

/// Opset 18 moved ReduceL2's `axes` from an attribute to an input: rewrite for >= 18.
pub fn reduce_axes_as_inputs(g: &mut GraphProto) {
    let mut extra = Vec::new();
    for (k, n) in g.node.iter_mut().enumerate() {
        if n.op_type != "ReduceL2" {
            continue;
        }
        if let Some(i) = n.attribute.iter().position(|a| a.name == "axes") {
            let axes = n.attribute.remove(i).ints;
            let name = format!("{}.axes_{k}", n.name);
            extra.push(crate::graph::i64_tensor(&name, &[axes.len() as i64], &axes));
            n.input.push(name);
        }
    }
    g.initializer.extend(extra);
}

/// Every tensor the two encoders read, with its shape for `cfg` (OpenAI names, SPEC §1).
pub fn encoder_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    let mut blocks = |prefix: &str, width: i64, layers: usize| {
        for i in 0..layers {
            let p = format!("{prefix}resblocks.{i}");
            for (n, s) in [
                ("attn.in_proj_weight", vec![3 * width, width]),
                ("attn.in_proj_bias", vec![3 * width]),
                ("attn.out_proj.weight", vec![width, width]),
                ("attn.out_proj.bias", vec![width]),
                ("ln_1.weight", vec![width]),
                ("ln_1.bias", vec![width]),
                ("ln_2.weight", vec![width]),
                ("ln_2.bias", vec![width]),
                ("mlp.c_fc.weight", vec![4 * width, width]),
                ("mlp.c_fc.bias", vec![4 * width]),
                ("mlp.c_proj.weight", vec![width, 4 * width]),
                ("mlp.c_proj.bias", vec![width]),
            ] {
                out.push((format!("{p}.{n}"), s));
            }
        }
    };
    let v = &cfg.vision;
    let (w, p) = (v.width as i64, v.patch_size as i64);
    let d = cfg.embed_dim as i64;
    blocks("visual.transformer.", w, v.layers);
    let t = &cfg.text;
    let tw = t.width as i64;
    blocks("transformer.", tw, t.layers);
    for (n, s) in [
        ("visual.conv1.weight", vec![w, 3, p, p]),
        ("visual.class_embedding", vec![w]),
        (
            "visual.positional_embedding",
            vec![v.num_tokens() as i64, w],
        ),
        ("visual.ln_pre.weight", vec![w]),
        ("visual.ln_pre.bias", vec![w]),
        ("visual.ln_post.weight", vec![w]),
        ("visual.ln_post.bias", vec![w]),
        ("visual.proj", vec![w, d]),
        ("token_embedding.weight", vec![t.vocab_size as i64, tw]),
        ("positional_embedding", vec![t.context_length as i64, tw]),
        ("ln_final.weight", vec![tw]),
        ("ln_final.bias", vec![tw]),
        ("text_projection", vec![tw, d]),
    ] {
        out.push((n.to_string(), s));
    }
    out.sort();
    out
}
