"""The one interface every backbone adapter implements.

A backbone maps token ids to per-token hidden states and nothing more: no LM head, no
training code. The objective (electra.py) adds heads and shares embeddings through the
accessors below, so it never needs to know which library is underneath.
"""

from __future__ import annotations

from pathlib import Path

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
    - ``compile_pays``: True when ``torch.compile`` makes the backbone's training step faster, so
      ``train.compile = 'auto'`` compiles long runs of it (measured: bench/RESULTS.md); False by
      default, as for a backbone nobody has measured.

    and may implement the optional hook ``export_hf`` (below) when their network exists in
    Hugging Face ``transformers``; ``electra-kit export --format hf`` calls it.
    """

    num_tokens: int
    hidden_dim: int
    emb_dim: int
    max_seq_len: int
    honours_padding_mask: bool = True
    deterministic: bool = True
    compile_pays: bool = False

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

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters bottom to top, ``[embeddings, layer 1, ..., layer L]`` (fine-tuning's
        layer-wise learning-rate decay uses it). Each parameter appears once.

        The default reads a layer index from the parameter names: the first all-digit part of the
        dotted name (``encoder.layers.3.attn.weight`` is in layer 3). Parameters that come before
        the first indexed one (embeddings, their projection) are group 0; unindexed ones after it
        (a final norm) join the top layer. Override when the library numbers its modules otherwise
        (x-transformers numbers an attention block and its feed-forward block apart).
        """
        return group_parameters(self.named_parameters(), _first_index)

    def export_hf(self, model_dir: Path, out_dir: Path) -> str:
        """Optional: write the model folder ``model_dir`` (whose encoder is of this class) to the
        empty folder ``out_dir`` so that ``transformers``' ``from_pretrained`` loads it, tokenizer
        included (``electra_kit.export.write_hf_tokenizer`` writes that part); return a few lines
        saying what was written and what was left out.

        Called by ``electra-kit export MODEL_DIR --format hf OUT_DIR`` on a backbone built from the
        folder's config.json (weights not loaded: read them from ``model_dir``). A backbone that
        does not override this is exported as the portable folder instead (electra_kit/modelfolder/export.py).
        """
        raise NotImplementedError(f"{type(self).__name__} has no Hugging Face transformers export")

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds {type(self).__name__}'s max_seq_len={self.max_seq_len}; "
                f"raise max_seq_len for this backbone or shorten the sequences"
            )


def _first_index(name: str) -> int | None:
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def group_parameters(named_parameters, index_of) -> list[list[nn.Parameter]]:
    """Group ``(name, parameter)`` pairs by ``index_of(name)`` (a layer number, or None).

    Returns ``[before the first indexed parameter, layer a, layer b, ...]`` in increasing index,
    with unindexed parameters after the first indexed one in the top group. Shared parameters
    count once, where they first appear.
    """
    entries, seen = [], set()
    for name, param in named_parameters:
        if id(param) not in seen:
            seen.add(id(param))
            entries.append((param, index_of(name)))
    rank = {i: r + 1 for r, i in enumerate(sorted({i for _, i in entries if i is not None}))}
    groups: list[list[nn.Parameter]] = [[] for _ in range(len(rank) + 1)]
    after_first = False
    for param, index in entries:
        if index is None:
            groups[-1 if after_first else 0].append(param)
        else:
            after_first = True
            groups[rank[index]].append(param)
    return groups
