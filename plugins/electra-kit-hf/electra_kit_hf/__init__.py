"""Hugging Face transformers' ``ElectraModel`` as an electra-kit backbone: Google's ELECTRA, exactly.

Upstream: ``transformers.ElectraModel(ElectraConfig(...))``, always randomly initialised from the
config (nothing is downloaded). Quirks and what this adapter does:

- The shared names become ElectraConfig fields: ``num_tokens`` -> ``vocab_size``, ``dim`` ->
  ``hidden_size``, ``depth`` -> ``num_hidden_layers``, ``heads`` -> ``num_attention_heads``,
  ``max_seq_len`` -> ``max_position_embeddings``, ``emb_dim`` -> ``embedding_size``, ``ff_mult`` ->
  ``intermediate_size = ff_mult * dim``, ``dropout`` -> both dropout probabilities. Any other
  keyword (``layer_norm_eps``, ``hidden_act``, ``attn_implementation``, ...) goes to ElectraConfig.
- ``layer_norm_eps`` is Google's 1e-12. HF's generator head takes its LayerNorm epsilon from the
  same field, so the backbone exposes it as ``layer_norm_eps`` and electra-kit's GeneratorHead
  uses it: the exported generator computes exactly what trained.
- ``attention_mask`` is a key mask, True/1 at real tokens: our convention. With SDPA attention
  (the default) padded keys get exactly zero weight.
- ``emb_dim != dim`` uses ElectraModel's own ``embeddings_project`` (ELECTRA-Small: 128 -> 256).
- ``embeddings.word_embeddings`` and ``embeddings.position_embeddings`` are *called* by
  ElectraEmbeddings, so shared and GDES-style modules can be installed there.
- A too-long sequence would fail deep inside with a shape error: we check ``max_seq_len`` first.
- ``export_hf`` writes ``ElectraForPreTraining`` / ``ElectraForMaskedLM`` folders (see hf_export.py).
"""

from __future__ import annotations

import torch
from torch import nn

from electra_kit import Backbone

# transformers is imported only when a backbone is built: whatever imports this module (electra-kit
# itself only when an hf-electra backbone is built) should not pay for the import.


def build_hf_electra(*, num_tokens: int, dim: int, depth: int, heads: int, max_seq_len: int,
                     emb_dim: int | None = None, ff_mult: int = 4, dropout: float = 0.0, **config_kwargs):
    from transformers import ElectraConfig

    config = ElectraConfig(
        vocab_size=num_tokens, embedding_size=emb_dim or dim, hidden_size=dim, num_hidden_layers=depth,
        num_attention_heads=heads, intermediate_size=ff_mult * dim, max_position_embeddings=max_seq_len,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        **{"layer_norm_eps": 1e-12, **config_kwargs},
    )
    return HFElectra(config)


class HFElectra(Backbone):
    """Wraps ``ElectraModel``; returns ``last_hidden_state`` ``(b, n, dim)``."""

    def __init__(self, config):
        from transformers import ElectraModel

        super().__init__()
        self.electra = ElectraModel(config)  # the name HF's ElectraFor* models use: keys map 1:1
        self.num_tokens, self.hidden_dim = config.vocab_size, config.hidden_size
        self.emb_dim, self.max_seq_len = config.embedding_size, config.max_position_embeddings
        self.layer_norm_eps = config.layer_norm_eps  # read by electra-kit's generator head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_seq_len(input_ids.shape[1])
        return self.electra(input_ids, attention_mask=attention_mask).last_hidden_state  # (b, n, d)

    def get_token_embedding(self) -> nn.Module:
        return self.electra.embeddings.word_embeddings

    def set_token_embedding(self, module: nn.Module) -> None:
        self.electra.embeddings.word_embeddings = module

    def get_position_embedding(self) -> nn.Module:
        return self.electra.embeddings.position_embeddings

    def set_position_embedding(self, module: nn.Module) -> None:
        self.electra.embeddings.position_embeddings = module

    def export_hf(self, model_dir, out_dir) -> str:
        from .hf_export import export

        return export(model_dir, out_dir)
