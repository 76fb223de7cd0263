//! Model structure: OpenAI CLIP names and shapes, forward shapes, TIR helpers.

mod common;

use sen_core::ModelConfig;
use sen_train::model::{Sen, tir};
use tch::{Device, Kind, Tensor, nn};

#[test]
fn vit_b16_parameter_names_and_shapes_are_openai_clip() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Sen::new(&vs.root(), &ModelConfig::vit_b16(), None, false);
    let v = vs.variables();
    let shape = |k: &str| v.get(k).unwrap_or_else(|| panic!("no {k}")).size();
    assert_eq!(shape("visual.conv1.weight"), vec![768, 3, 16, 16]);
    assert!(!v.contains_key("visual.conv1.bias"));
    assert_eq!(shape("visual.class_embedding"), vec![768]);
    assert_eq!(shape("visual.positional_embedding"), vec![193, 768]);
    assert_eq!(shape("visual.ln_pre.weight"), vec![768]);
    assert_eq!(
        shape("visual.transformer.resblocks.11.attn.in_proj_weight"),
        vec![2304, 768]
    );
    assert_eq!(
        shape("visual.transformer.resblocks.0.attn.in_proj_bias"),
        vec![2304]
    );
    assert_eq!(
        shape("visual.transformer.resblocks.0.attn.out_proj.weight"),
        vec![768, 768]
    );
    assert_eq!(
        shape("visual.transformer.resblocks.0.mlp.c_fc.weight"),
        vec![3072, 768]
    );
    assert_eq!(
        shape("visual.transformer.resblocks.0.mlp.c_proj.weight"),
        vec![768, 3072]
    );
    assert_eq!(shape("visual.ln_post.bias"), vec![768]);
    assert_eq!(shape("visual.proj"), vec![768, 512]);
    assert_eq!(shape("token_embedding.weight"), vec![49408, 512]);
    assert_eq!(shape("positional_embedding"), vec![77, 512]);
    assert_eq!(
        shape("transformer.resblocks.11.mlp.c_fc.weight"),
        vec![2048, 512]
    );
    assert_eq!(shape("ln_final.weight"), vec![512]);
    assert_eq!(shape("text_projection"), vec![512, 512]);
    // 12 + 12 blocks x 12 tensors + 8 vision top-level (conv1, class and position
    // embeddings, ln_pre x2, ln_post x2, proj) + 5 text top-level tensors: OpenAI's
    // state dict minus logit_scale.
    assert_eq!(v.len(), 24 * 12 + 8 + 5);
    let params: i64 = v.values().map(|t| t.numel() as i64).sum();
    assert!((149_000_000..151_000_000).contains(&params), "{params}");
}

#[test]
fn forward_shapes_and_heads() {
    let cfg = common::micro();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Sen::new(&vs.root(), &cfg, Some(7), true);
    let x = Tensor::randn([3, 3, 64, 32], (Kind::Float, Device::Cpu));
    assert_eq!(m.visual.forward(&x).size(), vec![3, 9, 32]);
    let ids = Tensor::zeros([3, 77], (Kind::Int64, Device::Cpu));
    assert_eq!(m.text.forward(&ids).size(), vec![3, 77, 32]);
    assert_eq!(
        m.encode_text(&ids, &Tensor::from_slice(&[1i64, 2, 3]))
            .size(),
        vec![3, 32]
    );
    let (keep, mask) = tir::random_masking(3, 8, 2, Device::Cpu);
    assert_eq!(keep.size(), vec![3, 1]);
    assert_eq!(mask.sum(Kind::Float).double_value(&[]), 21.0);
    let vis = m.visual.forward_masked(&x, &keep);
    assert_eq!(vis.size(), vec![3, 2, 32]);
    let pred = m
        .tir
        .as_ref()
        .unwrap()
        .forward(&vis, &keep, &m.text.forward(&ids));
    assert_eq!(pred.size(), vec![3, 8, 16 * 16 * 3]);
    let v = vs.variables();
    assert_eq!(v["id_head.weight"].size(), vec![7, 32]);
    let std = v["id_head.weight"].std(true).double_value(&[]);
    assert!(
        (0.0005..0.002).contains(&std),
        "ID head init N(0, 0.001): std {std}"
    );
    assert_eq!(
        v["id_head.bias"].abs().sum(Kind::Float).double_value(&[]),
        0.0
    );
    // Causal text: changing a later token does not change earlier positions.
    let a = Tensor::from_slice(&[49406i64, 320, 786, 49407])
        .pad([0, 73], "constant", Some(0.0))
        .view([1, 77]);
    let b = Tensor::from_slice(&[49406i64, 320, 999, 49407])
        .pad([0, 73], "constant", Some(0.0))
        .view([1, 77]);
    let (ta, tb) = (m.text.forward(&a), m.text.forward(&b));
    assert!(
        ta.narrow(1, 0, 2)
            .allclose(&tb.narrow(1, 0, 2), 1e-6, 1e-6, false)
    );
    assert!(
        !ta.narrow(1, 2, 1)
            .allclose(&tb.narrow(1, 2, 1), 1e-6, 1e-6, false)
    );
}

#[test]
fn sincos_matches_mae_formula() {
    // MAE: omega_k = 1 / 10000^(k / (D/4)); column c -> [sin(c w), cos(c w)], row r likewise.
    let (d, gh, gw) = (8i64, 3i64, 2i64);
    let t = tir::sincos_2d(d, gh, gw);
    assert_eq!(t.size(), vec![7, 8]);
    let row = |i: i64| Vec::<f32>::try_from(t.get(i)).unwrap();
    assert!(row(0).iter().all(|&v| v == 0.0), "CLS row is zero");
    let (r, c) = (2.0f64, 1.0f64); // token 1 + 2*2 + 1 = 6
    let w = [1.0, 1.0 / 100.0];
    let want = [
        (c * w[0]).sin(),
        (c * w[1]).sin(),
        (c * w[0]).cos(),
        (c * w[1]).cos(),
        (r * w[0]).sin(),
        (r * w[1]).sin(),
        (r * w[0]).cos(),
        (r * w[1]).cos(),
    ];
    for (g, w) in row(6).iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{:?} vs {want:?}", row(6));
    }
}

#[test]
fn patchify_order_is_row_column_channel() {
    // Image [1, 3, 2, 4] with patch 2 -> 2 patches; value = c*100 + y*10 + x.
    let v: Vec<f32> = (0..3)
        .flat_map(|c| (0..2).flat_map(move |y| (0..4).map(move |x| (c * 100 + y * 10 + x) as f32)))
        .collect();
    let img = Tensor::from_slice(&v).view([1, 3, 2, 4]);
    let p = tir::patchify(&img, 2);
    assert_eq!(p.size(), vec![1, 2, 12]);
    let second = Vec::<f32>::try_from(p.get(0).get(1)).unwrap();
    // Patch 1 covers x = 2..4: (y0,x2: c0,c1,c2), (y0,x3: ...), (y1,x2), (y1,x3).
    assert_eq!(
        second,
        vec![
            2., 102., 202., 3., 103., 203., 12., 112., 212., 13., 113., 213.
        ]
    );
    let g = tir::grayscale(&img);
    let px = g.get(0).get(2).get(1).get(3).double_value(&[]);
    let want = 0.2989 * 13.0 + 0.5870 * 113.0 + 0.1140 * 213.0;
    assert!((px - want).abs() < 1e-3);
}

/// The shortcuts training and evaluation take equal the whole encoders: the image
/// global feature from a CLS-only last block, the text global feature encoded only
/// up to the batch's last EOT, values and gradients alike.
#[test]
fn global_shortcuts_equal_the_whole_encoders() {
    tch::manual_seed(3);
    let cfg = common::micro();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Sen::new(&vs.root(), &cfg, None, false);
    let x = Tensor::randn([4, 3, 64, 32], (Kind::Float, Device::Cpu));
    let whole = m.visual.forward(&x).select(1, 0);
    let short = m.visual.forward_global(&x);
    assert_eq!(short.size(), vec![4, 32]);
    let diff = (&whole - &short).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "image: max |whole - CLS-only| = {diff}");
    // Shortcut is not a no-op: a different image gives a different feature.
    let other = m.visual.forward_global(&x.flip([3]));
    assert!((&other - &short).abs().max().double_value(&[]) > 1e-3);

    let mut rows = Vec::new();
    let eot = [5i64, 9, 3, 12];
    for (r, &e) in eot.iter().enumerate() {
        let mut ids = vec![0i64; 77];
        ids[0] = 49406;
        for (c, id) in ids.iter_mut().enumerate().take(e as usize).skip(1) {
            *id = 300 + (r * 31 + c * 7) as i64;
        }
        ids[e as usize] = 49407;
        rows.extend(ids);
    }
    let ids = Tensor::from_slice(&rows).view([4, 77]);
    let eot_t = Tensor::from_slice(&eot);
    assert_eq!(sen_train::model::trim_to_eot(&ids, 12).size(), vec![4, 13]);
    let whole = sen_train::model::pool_eot(&m.text.forward(&ids), &eot_t);
    let short = m.text.forward_global(&ids, &eot_t);
    let diff = (&whole - &short).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "text: max |whole - trimmed| = {diff}");

    // Gradients through both paths agree too (training uses the shortcuts).
    let grads = |f: &dyn Fn() -> Tensor| -> Vec<Tensor> {
        for (_, t) in vs.variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        f().square().sum(Kind::Float).backward();
        let mut v: Vec<_> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.iter().map(|(_, t)| t.grad().copy()).collect()
    };
    let a = grads(&|| {
        m.visual.forward(&x).select(1, 0).sum(Kind::Float)
            + sen_train::model::pool_eot(&m.text.forward(&ids), &eot_t).sum(Kind::Float)
    });
    let b = grads(&|| {
        m.visual.forward_global(&x).sum(Kind::Float)
            + m.text.forward_global(&ids, &eot_t).sum(Kind::Float)
    });
    for (ga, gb) in a.iter().zip(&b) {
        if ga.defined() {
            let d = (ga - gb).abs().max().double_value(&[]);
            let scale = ga.abs().max().double_value(&[]).max(1e-3);
            assert!(
                d / scale < 1e-4,
                "gradient differs by {d} (largest {scale})"
            );
        }
    }
}

/// `--amp` on a CPU: weight products in bf16 give the fp32 result to bf16's precision,
/// are really bf16 (not a no-op), and the setting ends with its closure.
#[test]
fn bf16_products_round_like_bf16_and_end_with_their_scope() {
    use sen_train::model::layers::{linear, project, with_bf16_products};
    tch::manual_seed(5);
    let x = Tensor::randn([16, 64], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([32, 64], (Kind::Float, Device::Cpu)) / 8.0;
    let b = Tensor::randn([32], (Kind::Float, Device::Cpu));
    let full = linear(&x, &w, Some(&b));
    let half = with_bf16_products(true, || linear(&x, &w, Some(&b)));
    assert_eq!(half.kind(), Kind::Float);
    let rel = ((&half - &full).norm() / full.norm()).double_value(&[]);
    // bf16 keeps 8 significant bits: relative error about 2^-9 per rounding.
    assert!(rel > 1e-5 && rel < 1e-2, "relative error {rel}");
    // Out of the closure, fp32 again (bit-identical to before).
    assert!(linear(&x, &w, Some(&b)).equal(&full));
    let p = Tensor::randn([64, 8], (Kind::Float, Device::Cpu));
    let pf = project(&x, &p);
    let ph = with_bf16_products(true, || project(&x, &p));
    let rel = ((&ph - &pf).norm() / pf.norm()).double_value(&[]);
    assert!(rel > 1e-5 && rel < 1e-2, "projection relative error {rel}");
    // Gradients reach the fp32 weights through the casts.
    let wv = w.set_requires_grad(true);
    with_bf16_products(true, || linear(&x, &wv, None))
        .sum(Kind::Float)
        .backward();
    assert_eq!(wv.grad().kind(), Kind::Float);
    let want = x
        .sum_dim_intlist(0, false, Kind::Float)
        .unsqueeze(0)
        .expand([32, 64], false);
    let rel = ((wv.grad() - &want).norm() / want.norm()).double_value(&[]);
    assert!(rel < 1e-2, "gradient relative error {rel}");
}
