"""Every registered backbone (built-ins and installed plugins) through the shared conformance suite.

Plus library options whose code paths differ (Reformer's bucket padding and full attention,
Performer's kernels / local heads / rotary, x-transformers without SDPA), and checks that the
suite itself catches broken backbones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from electra_kit.backbone import Backbone
from electra_kit.testing import (
    CHECKS,
    check_backbone,
    check_deterministic_flag,
    check_gradients,
    check_max_seq_len,
    check_padding_invariance,
    check_set_token_embedding,
)

try:
    from electra_kit import list_backbones
except ImportError:  # the package __init__ may not export it
    from electra_kit.registry import list_backbones

BUILT_INS = {"transformer", "reformer", "performer"}

# (registered name, library kwargs) for option paths worth the full suite too
OPTION_CONFIGS = [
    ("reformer", dict(bucket_size=4, n_hashes=2)),  # n=13 -> padded to 16, LSH across several buckets
    ("reformer", dict(use_full_attn=True)),  # exact masking: padding + determinism claims are checked
    ("performer", dict(rotary_position_emb=True)),
    ("performer", dict(generalized_attention=True)),
    ("performer", dict(no_projection=True)),
    ("performer", dict(local_attn_heads=1, local_window_size=8)),
    ("performer", dict(reversible=True)),
    ("transformer", dict(attn_flash=False)),
    *[(name, dict(dropout=0.1)) for name in sorted(BUILT_INS)],
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_check(check, name, **kwargs):
    result = check(name, **kwargs)
    if result is not None:
        pytest.skip(result)


def test_built_ins_are_registered():
    assert BUILT_INS <= set(list_backbones())


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", list_backbones())
def test_backbone_conforms(name, check):
    _run_check(check, name)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "name,options",
    OPTION_CONFIGS,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in OPTION_CONFIGS],
)
def test_backbone_options_conform(name, options, check):
    _run_check(check, name, **options)


def test_reformer_flags_follow_attention_kind():
    from electra_kit.backbones.reformer import build_reformer

    from electra_kit.testing import TINY_KWARGS

    lsh = build_reformer(**TINY_KWARGS)
    full = build_reformer(**TINY_KWARGS, use_full_attn=True)
    assert (lsh.honours_padding_mask, lsh.deterministic) == (False, False)
    assert (full.honours_padding_mask, full.deterministic) == (True, True)


# --- the suite must catch broken backbones -------------------------------------------------------


class _Toy(Backbone):
    """Masked mean-context toy backbone; ``flaw`` breaks one promise."""

    def __init__(self, *, num_tokens, dim, depth, heads, max_seq_len, emb_dim=None, flaw=None):
        super().__init__()
        self.num_tokens, self.hidden_dim, self.max_seq_len = num_tokens, dim, max_seq_len
        self.emb_dim, self.flaw = emb_dim or dim, flaw
        self.tok, self.pos = nn.Embedding(num_tokens, self.emb_dim), nn.Embedding(max_seq_len, self.emb_dim)
        self.proj = nn.Linear(self.emb_dim, dim)
        if flaw == "unused_param":
            self.unused = nn.Linear(2, 2)

    def forward(self, input_ids, attention_mask=None):
        b, n = input_ids.shape
        if self.flaw != "no_len_check":
            self.check_seq_len(n)
        x = F.embedding(input_ids, self.tok.weight) if self.flaw == "index_weight" else self.tok(input_ids)
        x = self.proj(x + self.pos(torch.arange(n)))  # (b, n, d)
        real = (
            torch.ones(b, n, 1)
            if attention_mask is None or self.flaw == "ignore_mask"
            else attention_mask[..., None]
        )
        ctx = (x * real).sum(1, keepdim=True) / real.sum(1, keepdim=True)  # (b, 1, d)
        noise = torch.rand_like(x) * 1e-3 if self.flaw == "random" else 0.0
        return x + ctx + noise  # (b, n, d)

    def get_token_embedding(self):
        return self.tok

    def set_token_embedding(self, module):
        self.tok = module

    def get_position_embedding(self):
        return self.pos

    def set_position_embedding(self, module):
        self.pos = module


def test_suite_passes_a_correct_toy():
    assert set(check_backbone(_Toy).values()) == {"ok"}


@pytest.mark.parametrize(
    "flaw,check,message",
    [
        ("ignore_mask", check_padding_invariance, "padding changes"),
        ("index_weight", check_set_token_embedding, "did not call"),
        ("no_len_check", check_max_seq_len, "expected ValueError naming max_seq_len, got IndexError"),
        ("random", check_deterministic_flag, "deterministic=True"),
        ("unused_param", check_gradients, "no gradient for ['unused.weight', 'unused.bias']"),
    ],
)
def test_suite_catches(flaw, check, message):
    with pytest.raises(AssertionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(lambda **kw: _Toy(**kw, flaw=flaw))
