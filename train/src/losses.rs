//! The four training objectives of SEN (SPEC §4), one function each.

use tch::{Kind, Reduction, Tensor};

fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12)
}

/// Similarity distribution matching. With v, t the L2-normalised image and text
/// features, `t2i = t v^T`, `i2t = t2i^T`, y_ij = [pid_i == pid_j], q = y / rowsum(y):
/// `L = mean_i sum_j p_ij (log p_ij - log(q_ij + 1e-8))` with p = softmax(scale * sim),
/// summed over both directions.
pub fn sdm(image: &Tensor, text: &Tensor, pids: &Tensor, scale: f64) -> Tensor {
    let (v, t) = (normalize(image), normalize(text));
    let t2i = t.matmul(&v.tr()) * scale;
    let i2t = t2i.tr();
    let y = pids
        .unsqueeze(1)
        .eq_tensor(&pids.unsqueeze(0))
        .to_kind(Kind::Float);
    let q = &y / y.sum_dim_intlist(1, true, Kind::Float);
    let log_q = (q + 1e-8).log();
    let term = |s: &Tensor| {
        let logp = s.log_softmax(1, Kind::Float);
        (logp.exp() * (&logp - &log_q))
            .sum_dim_intlist(1, false, Kind::Float)
            .mean(Kind::Float)
    };
    term(&i2t) + term(&t2i)
}

/// Identity loss: `(CE(W v + b, pid) + CE(W t + b, pid)) / 2` on unnormalised features.
pub fn id_loss(image_logits: &Tensor, text_logits: &Tensor, pids: &Tensor) -> Tensor {
    let ce = |l: &Tensor| l.cross_entropy_loss::<Tensor>(pids, None, Reduction::Mean, -100, 0.0);
    (ce(image_logits) + ce(text_logits)) / 2.0
}

/// Cross-modal triplet loss on the hardest in-batch negatives, both directions:
/// `mean_k relu(cos(t_k, v_neg(k)) - cos(t_k, v_k) + m) + mean_k relu(cos(v_k, t_neg(k)) - cos(v_k, t_k) + m)`,
/// where neg(k) is the most similar sample of another identity, mined without gradient.
/// Samples with no other identity in the batch contribute nothing.
pub fn triplet(image: &Tensor, text: &Tensor, pids: &Tensor, margin: f64) -> Tensor {
    let (v, t) = (normalize(image), normalize(text));
    let s = t.matmul(&v.tr()); // [text k, image j]
    let same = pids.unsqueeze(1).eq_tensor(&pids.unsqueeze(0));
    let direction = |sim: &Tensor| -> Tensor {
        let neg_idx = tch::no_grad(|| {
            sim.detach()
                .masked_fill(&same, f64::NEG_INFINITY)
                .argmax(1, true)
        });
        let has_neg = same.logical_not().any_dim(1, false).to_kind(Kind::Float);
        let neg = sim.gather(1, &neg_idx, false).squeeze_dim(1);
        let l = (neg - sim.diagonal(0, 0, 1) + margin).relu() * &has_neg;
        l.sum(Kind::Float) / (has_neg.sum(Kind::Float).clamp_min(1.0))
    };
    direction(&s) + direction(&s.tr())
}

/// TIR: mean squared error per patch, averaged over masked patches only.
/// pred, target: [B, N, P]; mask: [B, N] with 1 = masked.
pub fn tir_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Tensor {
    let per_patch = (pred - target).square().mean_dim(-1, false, Kind::Float);
    (per_patch * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::to_f64_vec;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }
    fn scalar(x: &Tensor) -> f64 {
        to_f64_vec(x)[0]
    }

    #[test]
    fn sdm_hand_worked() {
        // Two samples, different ids, orthogonal unit features, scale 1:
        // v = [[1,0],[0,1]], t = [[1,0],[0,1]] -> sim = I. Row i: p = softmax([1,0]) or ([0,1]),
        // q = one-hot of the diagonal. L_row = sum_j p_j (log p_j - log(q_j + 1e-8)).
        let (a, b) = (1f64.exp() / (1f64.exp() + 1.0), 1.0 / (1f64.exp() + 1.0));
        let row = a * (a.ln() - (1.0 + 1e-8f64).ln()) + b * (b.ln() - (1e-8f64).ln());
        let want = 2.0 * row; // mean over rows (equal) x two directions
        let v = t(&[1., 0., 0., 1.], &[2, 2]);
        let got = scalar(&sdm(&v, &v, &Tensor::from_slice(&[0i64, 1]), 1.0));
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        // Same identity: q = [0.5, 0.5] per row.
        let q = 0.5f64;
        let row = a * (a.ln() - (q + 1e-8).ln()) + b * (b.ln() - (q + 1e-8).ln());
        let got = scalar(&sdm(&v, &v, &Tensor::from_slice(&[3i64, 3]), 1.0));
        assert!((got - 2.0 * row).abs() < 1e-4, "{got} vs {}", 2.0 * row);
    }

    #[test]
    fn id_loss_hand_worked() {
        // logits [[2, 0]] with label 0: CE = -log(e^2/(e^2+1)); text logits [[0, 0]]: log 2.
        let want = ((1.0 + (-2f64).exp()).ln() + 2f64.ln()) / 2.0;
        let got = scalar(&id_loss(
            &t(&[2., 0.], &[1, 2]),
            &t(&[0., 0.], &[1, 2]),
            &Tensor::from_slice(&[0i64]),
        ));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn triplet_hand_worked() {
        // 3 samples, ids [0, 0, 1]. Unit 2-D features at angles: v = 0°, 60°, 90°; t = 10°, 50°, 100°.
        let deg = |d: f64| [d.to_radians().cos() as f32, d.to_radians().sin() as f32];
        let (va, ta) = ([0.0, 60.0, 90.0], [10.0, 50.0, 100.0]);
        let v: Vec<f32> = va.iter().flat_map(|&d| deg(d)).collect();
        let tt: Vec<f32> = ta.iter().flat_map(|&d| deg(d)).collect();
        let cos = |a: f64, b: f64| (a - b).to_radians().cos();
        let m = 0.05;
        // text k: positive v_k, hardest negative = most similar image of another id.
        let mut l1 = 0.0;
        let mut l2 = 0.0;
        let ids = [0, 0, 1];
        for k in 0..3 {
            let neg_t = (0..3)
                .filter(|&j| ids[j] != ids[k])
                .map(|j| cos(ta[k], va[j]))
                .fold(f64::MIN, f64::max);
            l1 += (neg_t - cos(ta[k], va[k]) + m).max(0.0);
            let neg_v = (0..3)
                .filter(|&j| ids[j] != ids[k])
                .map(|j| cos(va[k], ta[j]))
                .fold(f64::MIN, f64::max);
            l2 += (neg_v - cos(va[k], ta[k]) + m).max(0.0);
        }
        let want = l1 / 3.0 + l2 / 3.0;
        let got = scalar(&triplet(
            &t(&v, &[3, 2]),
            &t(&tt, &[3, 2]),
            &Tensor::from_slice(&[0i64, 0, 1]),
            m,
        ));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Nobody has a negative: zero.
        let got = scalar(&triplet(
            &t(&v, &[3, 2]),
            &t(&tt, &[3, 2]),
            &Tensor::from_slice(&[4i64, 4, 4]),
            m,
        ));
        assert_eq!(got, 0.0);
    }

    #[test]
    fn tir_mse_counts_masked_patches_only() {
        // 1 image, 2 patches of 2 values: errors (1,1) on patch 0 (masked), (3,3) on patch 1 (visible).
        let pred = t(&[1., 1., 3., 3.], &[1, 2, 2]);
        let target = Tensor::zeros([1, 2, 2], (Kind::Float, tch::Device::Cpu));
        let mask = t(&[1., 0.], &[1, 2]);
        assert!((scalar(&tir_mse(&pred, &target, &mask)) - 1.0).abs() < 1e-7);
    }
}
