"""x-transformers (lucidrains/x-transformers) as an ELECTRA backbone: a plain BERT-style encoder.

Upstream: ``TransformerWrapper(attn_layers=Encoder(...))``. Quirks and what this adapter does:

- Hidden states come back only when asked at call time (``return_embeddings=True``); we also build
  it with ``return_only_embed=True`` so no unused vocabulary head (and its never-trained weights)
  exists.
- The padding mask is the ``mask=`` keyword, bool, True at real tokens: the same convention as ours.
- ``emb_dim`` and the emb->hidden projection (``project_emb``) are native.
- The token embedding is ``token_emb.emb`` inside a ``TokenEmbedding`` that *calls* it, so any
  module with our embedding contract can be installed there (shared or GDES-style wrappers).
  The positional embedding is x-transformers' ``AbsolutePositionalEmbedding`` (scaled by
  ``emb_dim ** -0.5``, called as ``pos_emb(x, pos=..., seq_start_pos=..., offset=...)``); only a
  module of that class can replace it, i.e. share it between x-transformers backbones.
- Sub-module options are routed by name prefix (``attn_*``, ``ff_*``): our ``dim_head`` becomes
  ``attn_dim_head``, ``dropout`` becomes ``attn_dropout``/``ff_dropout``/``emb_dropout``. Any other
  keyword goes to ``TransformerWrapper`` if it takes it, else to ``Encoder``; one that neither takes
  is refused here in one line (``Encoder`` would assert, deep inside, "unrecognized kwargs").
- x-transformers multiplies its absolute positional embedding by ``emb_dim ** -0.5`` (it expects
  N(0, 1) tables); with ELECTRA's N(0, 0.02) tables that leaves positions ~11x weaker than tokens
  at emb_dim 128, and learning ~11x slower. ``position_scale=1.0`` adds them as BERT does.
  The shipped configs use rotary positions instead (``rotary_pos_emb=True``, passed through to
  x-transformers; no table to learn): gin/backbone_transformer.gin says why, with the numbers.
- ``attn_flash=True`` (default here) uses torch's scaled_dot_product_attention; with a boolean
  key mask it keeps real tokens independent of padding (max abs diff ~1e-6 on CPU, fp32).
- ``torch.compile`` makes one graph of the ELECTRA step over it and pays: 1.18x at the Small shape in
  bf16 on CPU (bench/RESULTS.md), so ``compile_pays=True``.
"""

from __future__ import annotations

import difflib
import inspect

import torch
from torch import nn
from x_transformers import Encoder, TransformerWrapper
from x_transformers.x_transformers import AbsolutePositionalEmbedding, AttentionLayers

from electra_kit.backbone import Backbone

_WRAPPER_ARGS = set(inspect.signature(TransformerWrapper.__init__).parameters) - {"self"}
_ENCODER_ARGS = set(inspect.signature(AttentionLayers.__init__).parameters) - {"self", "kwargs"}
_ROUTED = ("attn_", "ff_", "cross_attn_")  # Encoder hands these on to its attention and feed-forward blocks


def build_transformer(
    *,
    num_tokens: int,
    dim: int,
    depth: int,
    heads: int,
    max_seq_len: int,
    emb_dim: int | None = None,
    ff_mult: int = 4,
    dropout: float = 0.0,
    dim_head: int | None = None,
    position_scale: float | None = None,
    **library_kwargs,
) -> TransformerBackbone:
    """Encoder of ``depth`` pre-norm layers; extra keywords go to x-transformers unchanged."""
    _check_keywords(library_kwargs)
    emb_dim = emb_dim or dim
    dim_head = dim_head or dim // heads
    kwargs = dict(attn_flash=True, attn_dropout=dropout, ff_dropout=dropout, emb_dropout=dropout)
    kwargs.update(library_kwargs)
    if kwargs.get("rotary_pos_emb") and kwargs.get("rotary_emb_dim") is None:
        # x-transformers rotates dim_head // 2 dimensions by default and advises at least 32: a 32-wide head
        # (the CPU recipe's generator) would get 16
        kwargs["rotary_emb_dim"] = min(32, dim_head)
    wrapper_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _WRAPPER_ARGS}
    encoder = Encoder(
        dim=dim, depth=depth, heads=heads, attn_dim_head=dim_head, ff_mult=ff_mult, **kwargs
    )
    net = TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=max_seq_len,
        emb_dim=emb_dim,
        attn_layers=encoder,
        return_only_embed=True,
        **wrapper_kwargs,
    )
    if position_scale is not None and isinstance(getattr(net, "pos_emb", None), AbsolutePositionalEmbedding):
        net.pos_emb.scale = position_scale
    return TransformerBackbone(net)


def _check_keywords(library_kwargs: dict) -> None:
    unknown = sorted(k for k in library_kwargs if k not in _WRAPPER_ARGS | _ENCODER_ARGS and not k.startswith(_ROUTED))
    if not unknown:
        return
    own = [k for k in inspect.signature(build_transformer).parameters if k != "library_kwargs"]
    close = difflib.get_close_matches(unknown[0], list(dict.fromkeys(own + sorted(_WRAPPER_ARGS | _ENCODER_ARGS))), n=3)
    raise TypeError(f"backbone 'transformer' does not take {', '.join(repr(k) for k in unknown)}"
                    f"{' (did you mean ' + ' or '.join(repr(c) for c in close) + '?)' if close else ''}; it takes "
                    f"{', '.join(own)}, and any keyword of x-transformers' TransformerWrapper or Encoder "
                    f"({_ROUTED[0]}*, {_ROUTED[1]}* and {len(_WRAPPER_ARGS | _ENCODER_ARGS)} others)")


class TransformerBackbone(Backbone):
    """Wraps a built ``TransformerWrapper``; returns final-norm hidden states ``(b, n, dim)``."""

    compile_pays = True

    def __init__(self, net: TransformerWrapper):
        super().__init__()
        self.net = net
        self.num_tokens = net.num_tokens
        self.hidden_dim = net.attn_layers.dim
        self.emb_dim = net.emb_dim
        self.max_seq_len = net.max_seq_len

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_seq_len(input_ids.shape[1])
        mask = None if attention_mask is None else attention_mask.bool()  # (b, n)
        return self.net(input_ids, mask=mask, return_embeddings=True)  # (b, n, d)

    def get_token_embedding(self) -> nn.Module:
        return self.net.token_emb.emb

    def set_token_embedding(self, module: nn.Module) -> None:
        self.net.token_emb.emb = module  # TokenEmbedding.forward calls self.emb(ids)

    def get_position_embedding(self) -> nn.Module | None:
        pos = self.net.pos_emb  # `always(0)` (not a Module) when absolute positions are off
        has_weights = isinstance(pos, nn.Module) and any(True for _ in pos.parameters())
        return pos if has_weights else None

    def set_position_embedding(self, module: nn.Module) -> None:
        if self.get_position_embedding() is None:
            super().set_position_embedding(module)
        self.net.pos_emb = module

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """x-transformers numbers the attention and feed-forward blocks apart (``layers.0`` attention,
        ``layers.1`` its feed-forward): an ELECTRA layer is an attention block and what follows it."""
        import re

        from electra_kit.backbone import group_parameters

        block, blocks = 0, []
        for kind in self.net.attn_layers.layer_types:  # ('a', 'f', 'a', 'f', ...)
            block += kind == "a"
            blocks.append(block)

        def index(name: str) -> int | None:
            found = re.search(r"attn_layers\.layers\.(\d+)\.", name)
            return blocks[int(found.group(1))] if found else None

        return group_parameters(self.named_parameters(), index)
