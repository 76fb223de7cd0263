//! CLIP text encoder (token_embedding, positional_embedding, transformer, ln_final,
//! text_projection), causal, with projected features for every token.

use super::layers::{Transformer, layer_norm, project};
use sen_core::config::TextConfig;
use tch::{Tensor, nn};

#[derive(Debug)]
pub struct TextTransformer {
    token_embedding: nn::Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: nn::LayerNorm,
    text_projection: Tensor,
}

impl TextTransformer {
    /// `p` is the model root: CLIP keeps the text encoder's parameters at top level.
    pub fn new(p: &nn::Path, cfg: &TextConfig, embed_dim: i64) -> Self {
        let w = cfg.width as i64;
        TextTransformer {
            token_embedding: nn::embedding(
                p / "token_embedding",
                cfg.vocab_size as i64,
                w,
                nn::EmbeddingConfig {
                    ws_init: nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                    ..Default::default()
                },
            ),
            positional_embedding: p.var(
                "positional_embedding",
                &[cfg.context_length as i64, w],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            ),
            transformer: Transformer::new(
                p / "transformer",
                w,
                cfg.layers as i64,
                cfg.heads as i64,
                4 * w,
            ),
            ln_final: layer_norm(p / "ln_final", w),
            text_projection: p.var(
                "text_projection",
                &[w, embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: (w as f64).powf(-0.5),
                },
            ),
        }
    }

    /// ids [B, L] (L at most the context length) -> every token projected [B, L, D].
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let l = ids.size()[1];
        let x = ids.apply(&self.token_embedding) + self.positional_embedding.narrow(0, 0, l);
        let x = self.transformer.forward(&x, true);
        project(&x.apply(&self.ln_final), &self.text_projection)
    }

    /// Global features alone: ids [B, L], eot [B] -> [B, D], equal to
    /// `pool_eot(&forward(ids), eot)` but encoding only up to the batch's last EOT.
    pub fn forward_global(&self, ids: &Tensor, eot: &Tensor) -> Tensor {
        let max_eot = eot.max().int64_value(&[]);
        pool_eot(&self.forward(&trim_to_eot(ids, max_eot)), eot)
    }
}

/// The encoder is causal, so a token's feature depends on the tokens before it only:
/// the features up to the last EOT of a batch are the same whether or not the padding
/// after it is encoded. ids [B, L] -> ids [B, max(eot) + 1].
pub fn trim_to_eot(ids: &Tensor, max_eot: i64) -> Tensor {
    let l = ids.size()[1];
    ids.narrow(1, 0, (max_eot + 1).clamp(1, l))
}

/// The token at each row's EOT position: tokens [B, L, D], eot [B] -> [B, D].
pub fn pool_eot(tokens: &Tensor, eot: &Tensor) -> Tensor {
    let b = tokens.size()[0];
    tokens.index(&[
        Some(Tensor::arange(b, (tch::Kind::Int64, tokens.device()))),
        Some(eot.shallow_clone()),
    ])
}
