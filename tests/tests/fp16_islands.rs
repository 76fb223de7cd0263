//! Measurement behind the fp16 export's float32 islands (issue #5), not a pass/fail
//! check: ONNX Runtime's CPU provider computes fp16 nodes in float32 (it inserts
//! Casts), so the effect of fp16 *compute* is measured here with libtorch running the
//! encoders in half precision, with LayerNorm and Softmax each in fp16 or fp32,
//! against the fp32 model, on a trained checkpoint and real images:
//!
//! SEN_MEASURE_CKPT=RUN SEN_MEASURE_DATA=ROOT cargo test -p sen-tests --release \
//!   --test fp16_islands -- --ignored --nocapture

use sen_core::data::{Dataset, Split};
use sen_core::{ClipTokenizer, ModelConfig, PreprocessSpec, Preprocessor};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

struct W(HashMap<String, Tensor>);

impl W {
    fn g(&self, n: &str, k: Kind) -> Tensor {
        self.0[n].to_kind(k)
    }
}

#[derive(Clone, Copy)]
struct Mode {
    kind: Kind,
    ln32: bool,
    sm32: bool,
}

fn ln(w: &W, x: &Tensor, p: &str, m: Mode) -> Tensor {
    let k = if m.ln32 { Kind::Float } else { m.kind };
    let d = *x.size().last().unwrap();
    x.to_kind(k)
        .layer_norm(
            [d],
            Some(w.g(&format!("{p}.weight"), k)),
            Some(w.g(&format!("{p}.bias"), k)),
            1e-5,
            false,
        )
        .to_kind(m.kind)
}

fn block(w: &W, x: &Tensor, p: &str, heads: i64, causal: bool, m: Mode) -> Tensor {
    let (b, l, wd) = x.size3().unwrap();
    let hd = wd / heads;
    let h = ln(w, x, &format!("{p}.ln_1"), m);
    let qkv = h.matmul(&w.g(&format!("{p}.attn.in_proj_weight"), m.kind).tr())
        + w.g(&format!("{p}.attn.in_proj_bias"), m.kind);
    let qkv = qkv.view([b, l, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
    let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
    let mut s = q.matmul(&k.transpose(-1, -2)) * (1.0 / (hd as f64).sqrt());
    if causal {
        let mask = Tensor::ones([l, l], (Kind::Bool, Device::Cpu)).triu(1);
        s = s.masked_fill(&mask, f64::NEG_INFINITY);
    }
    let sk = if m.sm32 { Kind::Float } else { m.kind };
    let a = s.to_kind(sk).softmax(-1, sk).to_kind(m.kind);
    let o = a.matmul(&v).transpose(1, 2).reshape([b, l, wd]);
    let o = o.matmul(&w.g(&format!("{p}.attn.out_proj.weight"), m.kind).tr())
        + w.g(&format!("{p}.attn.out_proj.bias"), m.kind);
    let x = x + o;
    let h = ln(w, &x, &format!("{p}.ln_2"), m);
    let h = h.matmul(&w.g(&format!("{p}.mlp.c_fc.weight"), m.kind).tr())
        + w.g(&format!("{p}.mlp.c_fc.bias"), m.kind);
    let h = &h * (&h * 1.702).sigmoid();
    let h = h.matmul(&w.g(&format!("{p}.mlp.c_proj.weight"), m.kind).tr())
        + w.g(&format!("{p}.mlp.c_proj.bias"), m.kind);
    x + h
}

fn image(w: &W, cfg: &ModelConfig, x: &Tensor, m: Mode) -> Tensor {
    let v = &cfg.vision;
    let x = x.to_kind(m.kind).conv2d(
        &w.g("visual.conv1.weight", m.kind),
        None::<Tensor>,
        [v.patch_size as i64],
        [0],
        [1],
        1,
    );
    let (b, c, _, _) = x.size4().unwrap();
    let x = x.view([b, c, -1]).transpose(1, 2);
    let cls = w
        .g("visual.class_embedding", m.kind)
        .view([1, 1, c])
        .expand([b, 1, c], false);
    let mut x = Tensor::cat(&[cls, x], 1) + w.g("visual.positional_embedding", m.kind);
    x = ln(w, &x, "visual.ln_pre", m);
    for i in 0..v.layers {
        x = block(
            w,
            &x,
            &format!("visual.transformer.resblocks.{i}"),
            v.heads as i64,
            false,
            m,
        );
    }
    let g = ln(w, &x.select(1, 0), "visual.ln_post", m).matmul(&w.g("visual.proj", m.kind));
    let g = g.to_kind(Kind::Float);
    &g / g.norm_scalaropt_dim(2, [-1], true)
}

fn text(w: &W, cfg: &ModelConfig, ids: &Tensor, eot: &Tensor, m: Mode) -> Tensor {
    let mut x = w
        .g("token_embedding.weight", m.kind)
        .index_select(0, &ids.view([-1]))
        .view([ids.size()[0], ids.size()[1], -1])
        + w.g("positional_embedding", m.kind);
    for i in 0..cfg.text.layers {
        x = block(
            w,
            &x,
            &format!("transformer.resblocks.{i}"),
            cfg.text.heads as i64,
            true,
            m,
        );
    }
    let b = ids.size()[0];
    let g = x.index(&[
        Some(Tensor::arange(b, (Kind::Int64, Device::Cpu))),
        Some(eot.shallow_clone()),
    ]);
    let g = ln(w, &g, "ln_final", m)
        .matmul(&w.g("text_projection", m.kind))
        .to_kind(Kind::Float);
    &g / g.norm_scalaropt_dim(2, [-1], true)
}

#[test]
#[ignore = "measurement; needs SEN_MEASURE_CKPT and SEN_MEASURE_DATA"]
fn fp16_islands_measurement() {
    let (Ok(ckpt), Ok(data)) = (
        std::env::var("SEN_MEASURE_CKPT"),
        std::env::var("SEN_MEASURE_DATA"),
    ) else {
        panic!("set SEN_MEASURE_CKPT (a run or checkpoint) and SEN_MEASURE_DATA (a dataset root)");
    };
    let dir = sen_core::fsutil::resolve_checkpoint(std::path::Path::new(&ckpt)).unwrap();
    let cfg = ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
    let w = W(Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect());
    let ds = Dataset::load(std::path::Path::new(&data), None).unwrap();
    let set = ds.eval_set(Split::Test).unwrap();
    let pre = Preprocessor::new(PreprocessSpec::for_model(&cfg)).unwrap();
    let n = set.images.len().min(256);
    let imgs = pre.load_batch(&set.images[..n]).unwrap();
    let x = Tensor::from_slice(imgs.as_slice().unwrap()).view([
        n as i64,
        3,
        cfg.vision.image_height as i64,
        cfg.vision.image_width as i64,
    ]);
    let tok = ClipTokenizer::from_vocab_gz(
        &sen_core::deps::clip_vocab_path().unwrap(),
        cfg.text.context_length,
    )
    .unwrap();
    let caps: Vec<&str> = set.captions.iter().take(256).map(|c| c.as_str()).collect();
    let enc: Vec<_> = caps.iter().map(|c| tok.encode(c).unwrap()).collect();
    let ids = Tensor::from_slice(&enc.iter().flat_map(|e| e.ids.clone()).collect::<Vec<i64>>())
        .view([enc.len() as i64, -1]);
    let eot = Tensor::from_slice(&enc.iter().map(|e| e.eot_index as i64).collect::<Vec<_>>());
    tch::no_grad(|| {
        let f32m = Mode {
            kind: Kind::Float,
            ln32: true,
            sm32: true,
        };
        let (ri, rt) = (image(&w, &cfg, &x, f32m), text(&w, &cfg, &ids, &eot, f32m));
        let rank_ref = rt.matmul(&ri.tr()).argmax(-1, false);
        for (ln32, sm32) in [(false, false), (true, false), (false, true), (true, true)] {
            let m = Mode {
                kind: Kind::Half,
                ln32,
                sm32,
            };
            let (i, t) = (image(&w, &cfg, &x, m), text(&w, &cfg, &ids, &eot, m));
            let ci = (&i * &ri).sum_dim_intlist(&[-1i64][..], false, Kind::Float);
            let ct = (&t * &rt).sum_dim_intlist(&[-1i64][..], false, Kind::Float);
            let agree = t
                .matmul(&i.tr())
                .argmax(-1, false)
                .eq_tensor(&rank_ref)
                .to_kind(Kind::Float)
                .mean(Kind::Float);
            let finite = i.isfinite().all().int64_value(&[]) == 1
                && t.isfinite().all().int64_value(&[]) == 1;
            println!(
                "fp16 compute, LayerNorm {}, Softmax {}: image cos min 1-{:.2e} mean 1-{:.2e}; text cos min 1-{:.2e} mean 1-{:.2e}; top-1 agreement {:.2}%; finite {finite}",
                if ln32 { "fp32" } else { "fp16" },
                if sm32 { "fp32" } else { "fp16" },
                1.0 - ci.min().double_value(&[]),
                1.0 - ci.mean(Kind::Float).double_value(&[]),
                1.0 - ct.min().double_value(&[]),
                1.0 - ct.mean(Kind::Float).double_value(&[]),
                100.0 * agree.double_value(&[])
            );
        }
    });
}
