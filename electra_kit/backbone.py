"""The one interface every backbone adapter implements.

A backbone maps token ids to per-token hidden states and nothing more: no LM head, no
training code. The objective (electra.py) adds heads and shares embeddings through the
accessors below, so it never needs to know which library is underneath.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Token ids ``(b, n)`` (+ padding mask) in, hidden states ``(b, n, hidden_dim)`` out.

    Subclasses set these attributes in ``__init__``:

    - ``num_tokens``: vocabulary size of the token embedding.
    - ``hidden_dim``: width of the returned hidden states.
    - ``emb_dim``: width of the token embedding (may differ from ``hidden_dim``; the adapter
      projects). Two backbones can share a token embedding only when their ``emb_dim`` agree.
    - ``max_seq_len``: the longest sequence the backbone accepts.

    and may override the class attributes:

    - ``honours_padding_mask``: True when padded positions cannot change the hidden states of
      real tokens (checked by the shared test suite).
    - ``deterministic``: False when two forwards of the same input differ in eval mode
      (Reformer's random LSH hashing).
    """

    num_tokens: int
    hidden_dim: int
    emb_dim: int
    max_seq_len: int
    honours_padding_mask: bool = True
    deterministic: bool = True

    # Filled in by ``create_backbone`` so a saved model can be rebuilt from its config.
    backbone_name: str | None = None
    backbone_kwargs: dict | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask``: bool ``(b, n)``, True at real tokens; None means no padding."""
        raise NotImplementedError

    # Embedding sharing. A token embedding is any module mapping ids (b, n) -> (b, n, emb_dim)
    # that has a ``weight`` of shape (num_tokens, emb_dim).
    def get_token_embedding(self) -> nn.Module:
        raise NotImplementedError

    def set_token_embedding(self, module: nn.Module) -> None:
        raise NotImplementedError

    def get_position_embedding(self) -> nn.Module | None:
        """The learned positional embedding module, or None when positions have no weights."""
        return None

    def set_position_embedding(self, module: nn.Module) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no positional embedding to replace")

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds {type(self).__name__}'s max_seq_len={self.max_seq_len}; "
                f"raise max_seq_len for this backbone or shorten the sequences"
            )
