"""performer-pytorch (lucidrains/performer-pytorch) as an ELECTRA backbone: FAVOR+ linear attention.

Upstream: ``PerformerLM``. Quirks and what this adapter does:

- Hidden states come back with ``return_encodings=True`` at call (final LayerNorm applied). We
  build with ``tie_embed=True`` so no unused vocabulary head exists.
- No ``emb_dim``: we install our own front-end as ``token_emb``: an ``nn.Embedding(num_tokens,
  emb_dim)`` (THE token embedding, called, so shared or GDES-wrapped modules work), plus absolute
  positions in emb space, then ``Linear(emb_dim, dim)`` (Identity when equal).
- Default positions are rotary/sinusoidal, without weights. We default to a learnable absolute
  positional embedding (performer's own ``AbsolutePositionalEmbedding``, in emb space, added by our
  front-end; the library's ``pos_emb`` becomes ``Always(0)``). ``rotary_position_emb=True`` restores
  the library's rotary positions; then there is no positional embedding to share (None).
- Its mask (``mask=``, True = real) only zeros padded *values*: padded keys stay in the linear
  attention normaliser ``sum_j phi(k_j)`` and in the key-feature stabiliser ``max``, so real tokens
  change with padding (max abs diff ~0.2 at tiny sizes). There is no mask argument to
  ``FastAttention``; we wrap each one (``_MaskedFastAttention``) and hand it the mask through a
  forward pre-hook on its ``SelfAttention`` (so reversible recomputation sees it too). It zeroes
  padded key features and takes the stabiliser over real keys only: real tokens become independent
  of padding (exactly, at tiny sizes), ``honours_padding_mask=True``. Local-attention heads
  (``local_attn_heads``) mask keys properly only when given a mask (without one, their autopadding
  adds zero keys that real tokens attend to), so with local heads we always pass one; without
  them, ``attention_mask=None`` (no padding) skips the masking work. Axial positions
  (``axial_position_emb``) live in hidden space inside the library and are not exposed for sharing.
- Random projection features are a fixed buffer in eval (``deterministic=True``); in training the
  library redraws them every ``feature_redraw_interval`` (1000) forwards.
- ``reversible=True``: upstream replays RNG states recorded only in train mode, so a backward
  through an eval-mode forward crashes; ``eval()`` gives those wrappers a (harmless) state.
- ``dropout`` maps to ``emb_dropout``, ``attn_dropout`` (on attention output) and ``ff_dropout``.
- ``torch.compile`` fails under inductor (a view of the masked attention's non-contiguous tensor), so
  ``compile_pays`` stays False; a forced ``train.compile = True`` falls back to eager with a warning.
"""

from __future__ import annotations

import torch
from performer_pytorch import PerformerLM
from performer_pytorch.performer_pytorch import (
    AbsolutePositionalEmbedding,
    Always,
    FastAttention,
    SelfAttention,
    generalized_kernel,
    linear_attention,
    softmax_kernel,
)
from performer_pytorch.reversible import Deterministic
from torch import nn

from electra_kit.backbone import Backbone


def build_performer(
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
    rotary_position_emb: bool = False,
    **library_kwargs,
) -> PerformerBackbone:
    """Performer encoder; extra keywords (``nb_features``, ...) go to ``PerformerLM``."""
    emb_dim = emb_dim or dim
    kwargs = dict(emb_dropout=dropout, attn_dropout=dropout, ff_dropout=dropout)
    kwargs.update(library_kwargs)
    lm = PerformerLM(
        num_tokens=num_tokens,
        max_seq_len=max_seq_len,
        dim=dim,
        depth=depth,
        heads=heads,
        dim_head=dim_head or dim // heads,
        ff_mult=ff_mult,
        rotary_position_emb=rotary_position_emb,
        tie_embed=True,
        **kwargs,
    )
    pos = None
    if not rotary_position_emb and not kwargs.get("axial_position_emb", False):
        pos = AbsolutePositionalEmbedding(emb_dim, max_seq_len)
        lm.pos_emb = Always(0)  # positions are added in emb space by the front-end instead
    proj = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
    lm.token_emb = _Embed(nn.Embedding(num_tokens, emb_dim), pos, proj)
    for attn in lm.modules():
        if isinstance(attn, SelfAttention) and not attn.fast_attention.causal:
            attn.fast_attention = _MaskedFastAttention(attn.fast_attention)
            attn.register_forward_pre_hook(_hand_mask_to_fast_attention, with_kwargs=True)
    return PerformerBackbone(lm, num_tokens=num_tokens, emb_dim=emb_dim, dim=dim, max_seq_len=max_seq_len)


class _Embed(nn.Module):
    """ids (b, n) -> token (+ position) in emb space -> (b, n, dim)."""

    def __init__(self, token: nn.Module, pos: nn.Module | None, proj: nn.Module):
        super().__init__()
        self.token, self.pos, self.proj = token, pos, proj

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token(ids)  # (b, n, e)
        # a fresh tensor either way: the library adds its pos_emb in place
        x = x + self.pos(x) if self.pos is not None else x.clone()  # (b, n, e)
        return self.proj(x)  # (b, n, d)


def _hand_mask_to_fast_attention(module: SelfAttention, args, kwargs):
    module.fast_attention.key_mask = kwargs.get("mask")  # (b, n) bool or None


class _MaskedFastAttention(nn.Module):
    """performer's FastAttention with padded keys removed from both linear-attention sums."""

    def __init__(self, inner: FastAttention):
        super().__init__()
        self.inner = inner  # keeps the projection buffer (and the library's redraws) where they were
        self.key_mask = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (b, h, n, e)
        fa, mask = self.inner, self.key_mask
        if mask is None:
            return fa(q, k, v)
        mask = mask | ~mask.any(-1, keepdim=True)  # a fully padded row keeps all keys: no 0/0
        m = mask[:, None, :, None]  # (b, 1, n, 1)
        if fa.no_projection:
            q, k = q.softmax(dim=-1), k.masked_fill(~m, float("-inf")).softmax(dim=-2)
        elif fa.generalized_attention:
            q, k = (
                generalized_kernel(t, projection_matrix=fa.projection_matrix, kernel_fn=fa.kernel_fn)
                for t in (q, k)
            )
        else:
            q = softmax_kernel(q, projection_matrix=fa.projection_matrix, is_query=True)  # per-row: no mixing
            k = _masked_key_features(k, fa.projection_matrix, m)
        return linear_attention(q, k * m, v)  # (b, h, n, e)


def _masked_key_features(
    k: torch.Tensor, proj: torch.Tensor, m: torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """``softmax_kernel(is_query=False)`` with its stabilising max taken over real keys only."""
    norm = k.shape[-1] ** -0.25
    dash = torch.einsum("bhnd,jd->bhnj", norm * k, proj.type_as(k))  # (b, h, n, m)
    diag = (k**2).sum(dim=-1, keepdim=True) * (norm**2 / 2)  # (b, h, n, 1)
    stab = dash.masked_fill(~m, float("-inf")).amax(dim=(-1, -2), keepdim=True).detach()  # (b, h, 1, 1)
    expo = (dash - diag - stab).masked_fill(~m, float("-inf"))  # padded -> exp 0, no overflow
    return proj.shape[0] ** -0.5 * (torch.exp(expo) + eps)  # (b, h, n, m)


class PerformerBackbone(Backbone):
    """Wraps a built ``PerformerLM`` whose ``token_emb`` is our ``_Embed`` front-end."""

    def __init__(self, lm: PerformerLM, *, num_tokens: int, emb_dim: int, dim: int, max_seq_len: int):
        super().__init__()
        self.lm = lm
        self._local_heads = any(isinstance(m, SelfAttention) and m.local_attn is not None for m in lm.modules())
        self.num_tokens, self.emb_dim, self.hidden_dim, self.max_seq_len = (
            num_tokens,
            emb_dim,
            dim,
            max_seq_len,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_seq_len(input_ids.shape[1])
        if attention_mask is not None:
            mask = attention_mask.bool()  # (b, n)
        elif self._local_heads:
            # local heads' autopadding lets real tokens attend to zero keys without a mask
            mask = torch.ones_like(input_ids, dtype=torch.bool)  # (b, n)
        else:
            mask = None  # no padding: FAVOR+ without the key masking (the same values, ~10% faster)
        return self.lm(input_ids, mask=mask, return_encodings=True)  # (b, n, d)

    def train(self, mode: bool = True) -> PerformerBackbone:
        super().train(mode)
        # reversible layers replay RNG states that upstream records only in train mode; eval has no
        # randomness, so any valid state lets an eval-mode backward run (upstream crashes on None)
        for module in self.lm.modules():
            if isinstance(module, Deterministic) and module.cpu_state is None:
                module.cpu_state = torch.get_rng_state()
        return self

    def get_token_embedding(self) -> nn.Module:
        return self.lm.token_emb.token

    def set_token_embedding(self, module: nn.Module) -> None:
        self.lm.token_emb.token = module

    def get_position_embedding(self) -> nn.Module | None:
        return self.lm.token_emb.pos

    def set_position_embedding(self, module: nn.Module) -> None:
        if self.lm.token_emb.pos is None:
            super().set_position_embedding(module)
        self.lm.token_emb.pos = module
