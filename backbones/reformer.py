"""reformer-pytorch (lucidrains/reformer-pytorch) as an ELECTRA backbone: LSH attention, reversible layers.

Upstream: ``ReformerLM``. Quirks and what this adapter does:

- Hidden states are chosen at construction (``return_embeddings=True``), which also drops the
  vocabulary head; the final LayerNorm is applied.
- The padding mask must be passed as ``input_mask=``; ``mask=`` is accepted and silently ignored
  (it falls into ``**kwargs``). We always pass ``input_mask``.
- LSH attention asserts ``(seq_len + num_mem_kv) % (2 * bucket_size) == 0``. We right-pad (id 0,
  mask False) to that multiple and slice the padding off again: callers never see the rule.
  Ids at masked positions are replaced by 0 too, so the *content* of padding never matters.
  Without padding (no ``attention_mask`` and a length already on the rule) no mask is passed at
  all: the same values, ~5% faster.
- Without ``absolute_position_emb=True`` positions are weightless (rotary-like); we turn it on so
  there is a positional embedding to share. Because of the bucket padding the library asks for
  positions beyond ``max_seq_len``; a small wrapper serves the first ``max_seq_len`` rows from the
  real table and zeros for the (masked) rest, so the table stays ``(max_seq_len, emb_dim)``.
- Hashing draws fresh random rotations on every forward, also in eval: ``deterministic=False``.
- Padding is masked from attention scores, but padded positions still take part in hashing,
  sorting and chunking, and the number of buckets follows the padded length, so which real tokens
  share a chunk depends on how much padding follows. Measured at tiny sizes (eval, fixed seed):
  ~0.5 max abs diff with ``bucket_size=4``; ~2e-7 only when both lengths round up to the same
  bucket multiple. ``honours_padding_mask=False``. With ``use_full_attn=True`` (or
  ``full_attn_thres`` at least ``max_seq_len``) attention is full QK attention: no hashing, no
  padding, exact masking (~5e-7), and both flags are True.
- The library splits every feed-forward into ``ff_chunks=100`` pieces along the sequence (to bound
  memory at long lengths): at 128 tokens that is 64 feed-forwards of 2 positions per layer, and the
  whole step runs ~1.25x slower on CPU (bench/RESULTS.md). We default to one chunk per 512 positions
  of ``max_seq_len`` (1 up to 1023 tokens); the values are the same (the feed-forward is per
  position), pass ``ff_chunks`` to choose.
- ``ReformerLM`` discards ``post_attn_dropout``; we set it on each attention layer afterwards.
  ``dropout`` maps to ``lsh_dropout``, ``ff_dropout`` and ``post_attn_dropout``.
- Layers are reversible (activations recomputed in backward), but the recompute needs RNG states
  and hash buckets that are only recorded in train mode: a backward through an eval-mode forward
  crashes upstream. In eval we raise ``reverse_thres`` so the same layers run as plain (irreversible)
  blocks; train mode restores the configured ``reverse_thres``.
- ``torch.compile`` gains nothing (1.00x at the Small shape in bf16 on CPU: its reversible layers break the
  graph 30 times), so ``compile_pays`` stays False.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from reformer_pytorch import LSHSelfAttention, ReformerLM
from reformer_pytorch.reformer_pytorch import AbsolutePositionalEmbedding
from torch import nn

from electra_kit.backbone import Backbone

_FF_CHUNK_POSITIONS = 512  # sequence positions per feed-forward chunk (the library's default is 100 chunks)


def build_reformer(
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
    **library_kwargs,
) -> ReformerBackbone:
    """Reformer encoder; extra keywords (``bucket_size``, ``n_hashes``, ...) go to ``ReformerLM``."""
    kwargs = dict(
        absolute_position_emb=True, lsh_dropout=dropout, ff_dropout=dropout, post_attn_dropout=dropout,
        ff_chunks=max(1, max_seq_len // _FF_CHUNK_POSITIONS),
    )
    kwargs.update(library_kwargs)
    post_attn_dropout = kwargs.pop("post_attn_dropout")
    lm = ReformerLM(
        num_tokens=num_tokens,
        dim=dim,
        depth=depth,
        heads=heads,
        max_seq_len=max_seq_len,
        emb_dim=emb_dim,
        ff_mult=ff_mult,
        dim_head=dim_head or dim // heads,
        return_embeddings=True,
        **kwargs,
    )
    for attn in lm.modules():
        if isinstance(attn, LSHSelfAttention):
            attn.post_attn_dropout.p = post_attn_dropout
    if isinstance(lm.pos_emb, AbsolutePositionalEmbedding):
        lm.pos_emb = _FirstRowsPositions(lm.pos_emb, max_seq_len)
    # Full QK attention for every length we accept: exact masking, no hashing, no bucket rule.
    full_attn = kwargs.get("use_full_attn", False) or kwargs.get("full_attn_thres", 0) >= (
        max_seq_len + kwargs.get("num_mem_kv", 0)
    )
    return ReformerBackbone(lm, num_tokens=num_tokens, max_seq_len=max_seq_len, full_attn=full_attn)


class _FirstRowsPositions(nn.Module):
    """Positions for a bucket-padded length: the real table up to max_seq_len, zeros beyond (masked)."""

    def __init__(self, inner: nn.Module, max_seq_len: int):
        super().__init__()
        self.inner = inner
        self.max_seq_len = max_seq_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (b, L, e)
        pos = self.inner(x[:, : self.max_seq_len])  # (n, e), n = min(L, max_seq_len)
        return F.pad(pos, (0, 0, 0, x.shape[1] - pos.shape[-2]))  # (L, e)


class ReformerBackbone(Backbone):
    """Wraps a built ``ReformerLM(return_embeddings=True)``; pads to the LSH bucket rule internally."""

    def __init__(self, lm: ReformerLM, *, num_tokens: int, max_seq_len: int, full_attn: bool = False):
        super().__init__()
        self.lm = lm
        self.num_tokens = num_tokens
        self.hidden_dim = lm.norm.normalized_shape[0]
        self.emb_dim = lm.token_emb.embedding_dim
        self.max_seq_len = max_seq_len
        self.multiple = 1 if full_attn else 2 * lm.reformer.bucket_size
        self.num_mem_kv = lm.reformer.num_mem_kv
        self.honours_padding_mask = self.deterministic = full_attn
        self.reverse_thres = lm.reformer.layers.reverse_thres

    def train(self, mode: bool = True) -> ReformerBackbone:
        super().train(mode)
        self.lm.reformer.layers.reverse_thres = self.reverse_thres if mode else math.inf
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = input_ids.shape[1]
        self.check_seq_len(n)
        extra = -(n + self.num_mem_kv) % self.multiple
        if attention_mask is None and extra == 0:
            return self.lm(input_ids)  # (b, n, d): no padding at all, the library's unmasked path (same values)
        mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        ids = input_ids.masked_fill(~mask, 0)  # (b, n): padding content never matters
        ids, mask = F.pad(ids, (0, extra)), F.pad(mask, (0, extra), value=False)  # (b, L)
        hidden = self.lm(ids, input_mask=mask)  # (b, L, d); `mask=` would be ignored
        return hidden[:, :n]  # (b, n, d)

    def get_token_embedding(self) -> nn.Module:
        return self.lm.token_emb

    def set_token_embedding(self, module: nn.Module) -> None:
        self.lm.token_emb = module  # ReformerLM.forward calls self.token_emb(ids)

    def get_position_embedding(self) -> nn.Module | None:
        pos = self.lm.pos_emb
        if isinstance(pos, _FirstRowsPositions):
            return pos.inner
        return pos if any(True for _ in pos.parameters()) else None  # axial has weights; Always(0) none

    def set_position_embedding(self, module: nn.Module) -> None:
        if self.get_position_embedding() is None:
            super().set_position_embedding(module)
        if isinstance(self.lm.pos_emb, _FirstRowsPositions):
            self.lm.pos_emb.inner = module
        else:
            self.lm.pos_emb = module
