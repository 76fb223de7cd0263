//! Adam with parameter groups and saved moments (tch's optimiser exposes no state,
//! so exact resume needs our own), and the warm-up + cosine schedule (SPEC §5).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor, nn};

/// The optimisation recipe, saved in `train.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    pub name: String,
    pub epochs: usize,
    pub lr: f64,
    pub bias_lr: f64,
    /// Multiplier for the reference code's `cross` parameters (the TIR
    /// cross-attention and its decoder blocks) and the ID classifier.
    pub head_lr_mult: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub warmup_epochs: usize,
    pub warmup_factor: f64,
    /// The recipe's batch layout and evaluation cadence: the defaults of `sen-train
    /// train --batch`, `--batch-k` and `--eval-every` (the run's effective values are
    /// `TrainOptions`', each recorded with its source in `train.json`'s `settings`).
    /// Files written before these existed read as SPEC §5's 128 = 64 x 2, every epoch.
    #[serde(default = "spec_batch")]
    pub batch: usize,
    #[serde(default = "two")]
    pub batch_k: usize,
    #[serde(default = "one")]
    pub eval_every: usize,
}

fn spec_batch() -> usize {
    128
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}

impl Recipe {
    /// SPEC §5: fine-tuning pretrained CLIP.
    pub fn reference() -> Self {
        Recipe {
            name: "reference".into(),
            epochs: 60,
            lr: 1e-5,
            bias_lr: 2e-5,
            head_lr_mult: 5.0,
            weight_decay: 4e-5,
            eps: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            warmup_epochs: 5,
            warmup_factor: 0.1,
            batch: 128,
            batch_k: 2,
            eval_every: 1,
        }
    }

    /// The tiny preset from random weights: ordinary Adam eps and a higher rate
    /// (SPEC §5 says the reference recipe barely moves random weights), batch 32 =
    /// 16 x 2, val every 5 epochs, 36 epochs: the values of the README's 10-minute
    /// results (36 epochs fit ten minutes on two cores with bf16 products; with a
    /// `--max-minutes` budget the trainer fits the schedule to what the machine
    /// finishes). lr, beta2, batch, K and the schedule were chosen by the
    /// measurements in docs/decisions.md ("Tiny recipe").
    pub fn tiny_scratch() -> Self {
        Recipe {
            name: "tiny-scratch".into(),
            epochs: 36,
            lr: 5e-4,
            bias_lr: 5e-4,
            head_lr_mult: 1.0,
            weight_decay: 4e-5,
            eps: 1e-8,
            beta1: 0.9,
            beta2: 0.98,
            warmup_epochs: 2,
            warmup_factor: 0.1,
            batch: 32,
            batch_k: 2,
            eval_every: 5,
        }
    }

    pub fn named(name: &str) -> Result<Self> {
        match name {
            "reference" => Ok(Self::reference()),
            "tiny-scratch" => Ok(Self::tiny_scratch()),
            other => anyhow::bail!("--recipe {other:?}: expected reference or tiny-scratch"),
        }
    }

    /// Learning-rate factor for `epoch` (0-based): linear warm-up from
    /// `warmup_factor` over `warmup_epochs`, then cosine to 0 at `epochs`.
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs {
            let a = epoch as f64 / self.warmup_epochs as f64;
            self.warmup_factor * (1.0 - a) + a
        } else {
            let span = (self.epochs - self.warmup_epochs).max(1) as f64;
            let t = (epoch - self.warmup_epochs) as f64 / span;
            0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// Elements per piece of a large tensor in [`Adam::step`]: 2 MiB per buffer keeps a
/// piece's five buffers in cache across its ten passes (tiny preset: Adam 12.2 ->
/// 10.8 ms per step on two cores; smaller pieces cost more in launches).
const ADAM_CHUNK: i64 = 1 << 19;

struct Param {
    name: String,
    tensor: Tensor,
    lr: f64,
    weight_decay: f64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Working memory for `step`, allocated on first use (not saved).
    scratch: Option<Tensor>,
}

/// Adam with L2 weight decay (added to the gradient, as torch's `Adam(weight_decay=)`).
pub struct Adam {
    params: Vec<Param>,
    pub step: i64,
    recipe: Recipe,
}

/// The learning rate and weight decay of one parameter, by the reference code's
/// `build_optimizer` (SPEC §5), rules in order, a later one overriding: a name it
/// would call `cross` (sen's `tir.cross_attn.*` and the decoder blocks `tir.blocks.*`,
/// the authors' `cross_attn_Text` and `cross_modal_transformer_mae`) -> `lr x
/// head_lr_mult`; a name containing `bias` -> `bias_lr`, weight decay 0; the ID
/// classifier (`id_head.*`, their `classifier`) -> `lr x head_lr_mult` (its bias
/// keeps weight decay 0). Returns (group name, lr, weight decay).
pub fn param_group(name: &str, recipe: &Recipe) -> (&'static str, f64, f64) {
    let head_lr = recipe.lr * recipe.head_lr_mult;
    let mut g = ("base", recipe.lr, recipe.weight_decay);
    if name.starts_with("tir.cross_attn.") || name.starts_with("tir.blocks.") {
        g = ("cross", head_lr, recipe.weight_decay);
    }
    let bias = name.contains("bias");
    if bias {
        g = ("bias", recipe.bias_lr, 0.0);
    }
    if name.starts_with("id_head.") {
        g = if bias {
            ("classifier bias", head_lr, 0.0)
        } else {
            ("classifier", head_lr, recipe.weight_decay)
        };
    }
    g
}

/// One parameter group as printed at start-up and recorded in `train.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupReport {
    pub group: String,
    pub lr: f64,
    pub weight_decay: f64,
    /// Parameters (tensors) and their elements in the group.
    pub tensors: usize,
    pub elements: i64,
    /// Up to four parameter names, for the reader.
    pub examples: Vec<String>,
}

impl Adam {
    /// Per-parameter rates and decay by [`param_group`].
    pub fn new(vs: &nn::VarStore, recipe: &Recipe) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, tensor)| {
                let (_, lr, weight_decay) = param_group(&name, recipe);
                let exp_avg = tensor.zeros_like();
                let exp_avg_sq = tensor.zeros_like();
                Param {
                    name,
                    tensor,
                    lr,
                    weight_decay,
                    exp_avg,
                    exp_avg_sq,
                    scratch: None,
                }
            })
            .collect();
        Adam {
            params,
            step: 0,
            recipe: recipe.clone(),
        }
    }

    /// The parameter groups in the order of their first parameter (by name).
    pub fn group_report(&self) -> Vec<GroupReport> {
        let mut out: Vec<GroupReport> = Vec::new();
        for p in &self.params {
            let (group, lr, wd) = param_group(&p.name, &self.recipe);
            let i = match out.iter().position(|g| g.group == group) {
                Some(i) => i,
                None => {
                    out.push(GroupReport {
                        group: group.into(),
                        lr,
                        weight_decay: wd,
                        tensors: 0,
                        elements: 0,
                        examples: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            let g = &mut out[i];
            g.tensors += 1;
            g.elements += p.tensor.numel() as i64;
            if g.examples.len() < 4 {
                g.examples.push(p.name.clone());
            }
        }
        out
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One update with every group's rate scaled by `lr_factor`.
    pub fn step(&mut self, lr_factor: f64) {
        self.step += 1;
        let (b1, b2, eps) = (self.recipe.beta1, self.recipe.beta2, self.recipe.eps);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        // PyTorch's Adam formulation, in place and without allocating (each parameter
        // keeps one scratch buffer of at most one piece):
        // g += wd p; m.lerp_(g, 1 - b1); v = b2 v + (1 - b2) g^2;
        // p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
        let scalar = |x: f64| Tensor::from(x as f32);
        let one_minus_b2 = scalar(1.0 - b2);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let n = p.tensor.numel() as i64;
                let tmp = p.scratch.get_or_insert_with(|| {
                    Tensor::empty([ADAM_CHUNK.min(n)], (Kind::Float, p.tensor.device()))
                });
                let step_size = p.lr * lr_factor / bc1;
                let wd = (p.weight_decay > 0.0).then(|| scalar(p.weight_decay));
                // Large tensors (the token table) in cache-sized pieces: the ten passes
                // then run over memory the cache still holds.
                let flat = |t: &Tensor| t.view([-1]);
                let (pf, gf, mf, vf) = (
                    flat(&p.tensor),
                    flat(&g),
                    flat(&p.exp_avg),
                    flat(&p.exp_avg_sq),
                );
                let mut off = 0;
                while off < n {
                    let len = ADAM_CHUNK.min(n - off);
                    let mut pc = pf.narrow(0, off, len);
                    let mut gc = gf.narrow(0, off, len);
                    let mut mc = mf.narrow(0, off, len);
                    let mut vc = vf.narrow(0, off, len);
                    let mut tc = tmp.narrow(0, 0, len);
                    if let Some(wd) = &wd {
                        let _ = gc.addcmul_(&pc, wd);
                    }
                    let _ = mc.lerp_(&gc, 1.0 - b1);
                    let _ = vc.g_mul_scalar_(b2);
                    let _ = gc.mul_out(&tc, &one_minus_b2);
                    let _ = vc.addcmul_(&tc, &gc);
                    if step_size > 0.0 {
                        // p += m / ((sqrt(v) / sqrt(bc2) + eps) / -step_size)
                        let _ = vc.sqrt_out(&tc);
                        let _ = tc.g_mul_scalar_(1.0 / bc2.sqrt());
                        let _ = tc.g_add_scalar_(eps);
                        let _ = tc.g_mul_scalar_(-1.0 / step_size);
                        let _ = pc.addcdiv_(&mc, &tc);
                    }
                    off += len;
                }
            }
        });
    }

    /// One update from gradients scaled by `1 / inv_scale` (fp16 loss scaling): if any
    /// gradient is not finite, nothing changes and `false` is returned.
    pub fn step_scaled(&mut self, lr_factor: f64, inv_scale: f64) -> bool {
        let finite = tch::no_grad(|| {
            self.params.iter().all(|p| {
                let g = p.tensor.grad();
                !g.defined() || g.isfinite().all().int64_value(&[]) == 1
            })
        });
        if !finite {
            return false;
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(inv_scale);
                }
            }
        });
        self.step(lr_factor);
        true
    }

    /// Save moments and the step count (`optimizer.safetensors`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len() + 1);
        for p in &self.params {
            named.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            named.push((
                format!("{}.exp_avg_sq", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Restore moments saved by [`Adam::save`]; every parameter must be present.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let map: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
        let step = map
            .get("step")
            .with_context(|| format!("{}: no `step` entry", path.display()))?;
        self.step = step.int64_value(&[0]);
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (suffix, dst) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let key = format!("{}.{suffix}", p.name);
                    let src = map
                        .get(&key)
                        .with_context(|| format!("{}: missing `{key}`", path.display()))?;
                    anyhow::ensure!(
                        src.size() == dst.size(),
                        "{}: `{key}` has shape {:?}, expected {:?}",
                        path.display(),
                        src.size(),
                        dst.size()
                    );
                    dst.copy_(&src.to_kind(Kind::Float).to_device(dst.device()));
                }
            }
            Ok(())
        })
    }

    /// (name, lr) of every parameter, for tests and logs.
    pub fn groups(&self) -> Vec<(String, f64, f64)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.lr, p.weight_decay))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let r = Recipe::reference();
        assert!((r.lr_factor(0) - 0.1).abs() < 1e-12);
        assert!((r.lr_factor(5) - 1.0).abs() < 1e-12);
        assert!((r.lr_factor(4) - (0.1 * 0.2 + 0.8)).abs() < 1e-12);
        assert!(
            (r.lr_factor(5 + 55 / 2) - 0.5 * (1.0 + (std::f64::consts::PI * 27.0 / 55.0).cos()))
                .abs()
                < 1e-12
        );
        assert!(r.lr_factor(59) < 0.01);
    }

    /// One parameter x = [1, -2] under Adam with lr 0.1, no decay, eps 1e-8.
    fn one_parameter_adam() -> (nn::VarStore, Tensor, Adam) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let x = vs.root().var_copy("w", &Tensor::from_slice(&[1f32, -2.]));
        let r = Recipe {
            lr: 0.1,
            bias_lr: 0.1,
            weight_decay: 0.0,
            eps: 1e-8,
            ..Recipe::reference()
        };
        let opt = Adam::new(&vs, &r);
        (vs, x, opt)
    }

    #[test]
    fn adam_matches_the_formula() {
        // One parameter x = [1, -2], loss = sum(x^2) -> grad 2x. Torch Adam, lr 0.1, wd 0:
        // step 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2 -> x -= 0.1 * g / (|g| + eps).
        let (_vs, x, mut opt) = one_parameter_adam();
        opt.zero_grad();
        x.square().sum(Kind::Float).backward();
        opt.step(1.0);
        let got = Vec::<f32>::try_from(&x).unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
    }

    /// Weight decay, bias correction and a tensor larger than one piece of the chunked
    /// update, against Adam written out in f64 here.
    #[test]
    fn adam_with_decay_over_pieces_matches_the_formula() {
        let n = ADAM_CHUNK as usize + 7;
        // Positive values keep the gradient x^2 + 0.1 x away from 0, where f32 and f64
        // would disagree about a sign rather than about Adam.
        let x0: Vec<f32> = (0..n)
            .map(|i| 0.1 + (i * 37 % 1001) as f32 / 250.0)
            .collect();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let x = vs.root().var_copy("w", &Tensor::from_slice(&x0));
        let r = Recipe {
            lr: 0.01,
            weight_decay: 0.1,
            eps: 1e-8,
            beta1: 0.9,
            beta2: 0.98,
            ..Recipe::reference()
        };
        let mut opt = Adam::new(&vs, &r);
        let (mut want, mut m, mut v) = (
            x0.iter().map(|&a| a as f64).collect::<Vec<_>>(),
            vec![0f64; n],
            vec![0f64; n],
        );
        for step in 1..=3 {
            opt.zero_grad();
            // loss = sum(x^3) / 3 -> grad x^2
            (x.pow_tensor_scalar(3) / 3.0).sum(Kind::Float).backward();
            opt.step(0.5);
            let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.98f64.powi(step));
            for i in 0..n {
                let g = want[i] * want[i] + 0.1 * want[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.98 * v[i] + 0.02 * g * g;
                want[i] -= 0.005 * (m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-8);
            }
        }
        let got = Vec::<f32>::try_from(&x).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "max |sen - formula| = {worst}");
        // The pieces' boundary moved like the rest: the last element changed.
        assert!((got[n - 1] - x0[n - 1]).abs() > 1e-3);
    }

    #[test]
    fn scaled_step_unscales_and_skips_overflow() {
        let (_vs, x, mut opt) = one_parameter_adam();
        // Loss scaled by 1024: the update equals the unscaled one (Adam is scale-free
        // up to eps, and the gradient is divided back before the moments).
        opt.zero_grad();
        (x.square().sum(Kind::Float) * 1024.0).backward();
        assert!(opt.step_scaled(1.0, 1.0 / 1024.0));
        let got = Vec::<f32>::try_from(&x).unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
        // A non-finite gradient: nothing moves, the step count does not advance.
        opt.zero_grad();
        (x.sum(Kind::Float) * f64::INFINITY).backward();
        assert!(!opt.step_scaled(1.0, 1.0));
        assert_eq!(Vec::<f32>::try_from(&x).unwrap(), got);
        assert_eq!(opt.step, 1);
    }

    #[test]
    fn groups_follow_the_spec() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        for name in [
            "visual.proj",
            "visual.ln_pre.bias",
            "tir.cross_attn.q_proj.weight",
            "tir.cross_attn.q_proj.bias",
            "tir.blocks.0.mlp.c_fc.weight",
            "tir.blocks.3.attn.out_proj.bias",
            "tir.ln_in.weight",
            "tir.head.weight",
            "tir.mask_token",
            "id_head.weight",
            "id_head.bias",
        ] {
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap();
            let p = parts.iter().fold(vs.root(), |p, s| p / *s);
            let _ = p.var(leaf, &[2, 2], nn::Init::Const(0.0));
        }
        let opt = Adam::new(&vs, &Recipe::reference());
        let g: BTreeMap<String, (f64, f64)> = opt
            .groups()
            .into_iter()
            .map(|(n, lr, wd)| (n, (lr, wd)))
            .collect();
        assert_eq!(g["visual.proj"], (1e-5, 4e-5));
        assert_eq!(g["visual.ln_pre.bias"], (2e-5, 0.0));
        // SPEC §5 (the reference's build_optimizer): the cross-attention and its
        // decoder blocks at 5x, their biases at 2x without decay, the rest of the
        // decoder at 1x, the ID head at 5x, its bias at 5x without decay.
        assert_eq!(g["tir.cross_attn.q_proj.weight"], (5e-5, 4e-5));
        assert_eq!(g["tir.cross_attn.q_proj.bias"], (2e-5, 0.0));
        assert_eq!(g["tir.blocks.0.mlp.c_fc.weight"], (5e-5, 4e-5));
        assert_eq!(g["tir.blocks.3.attn.out_proj.bias"], (2e-5, 0.0));
        assert_eq!(g["tir.ln_in.weight"], (1e-5, 4e-5));
        assert_eq!(g["tir.head.weight"], (1e-5, 4e-5));
        assert_eq!(g["tir.mask_token"], (1e-5, 4e-5));
        assert_eq!(g["id_head.weight"], (5e-5, 4e-5));
        assert_eq!(g["id_head.bias"], (5e-5, 0.0));
        // The report: one line per group, every tensor counted once.
        let report = opt.group_report();
        let names: Vec<&str> = report.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(
            names,
            ["classifier bias", "classifier", "cross", "bias", "base"]
        );
        assert_eq!(report.iter().map(|r| r.tensors).sum::<usize>(), 11);
        assert_eq!(report.iter().map(|r| r.elements).sum::<i64>(), 44);
        let cross = &report[2];
        assert_eq!(
            (cross.lr, cross.weight_decay, cross.tensors),
            (5e-5, 4e-5, 2)
        );
    }
}
