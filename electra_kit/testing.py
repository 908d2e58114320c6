"""Backbone conformance suite: plain functions any backbone (built-in or plugin) can be run through.

    from electra_kit.testing import check_backbone
    check_backbone("my_backbone")                    # a registered name, at TINY_KWARGS
    check_backbone(build_mine, dim=64, bucket=8)     # or a builder, with overrides

Each ``check_*`` builds a fresh backbone from ``{**TINY_KWARGS, **kwargs}``, raises
``AssertionError`` on a failure and returns ``None`` when it passed or a string starting with
``"skipped:"`` when it does not apply (e.g. padding invariance for a backbone that declares
``honours_padding_mask=False``). ``check_backbone`` runs them all and returns ``{name: result}``.
Everything runs on CPU at tiny sizes in well under a second per check.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone

TINY_KWARGS = dict(num_tokens=64, dim=32, depth=2, heads=2, max_seq_len=32, emb_dim=16)
ATOL = 1e-5


def build(backbone: str | Callable[..., Backbone], **kwargs) -> Backbone:
    """A fresh backbone (seed 0) from a registered name or a builder, at ``TINY_KWARGS`` + overrides."""
    from .registry import create_backbone

    kwargs = {**TINY_KWARGS, **kwargs}
    torch.manual_seed(0)
    model = create_backbone(backbone, **kwargs) if isinstance(backbone, str) else backbone(**kwargs)
    assert isinstance(model, Backbone), f"builder returned {type(model).__name__}, not a Backbone"
    return model


def _ids(model: Backbone, b: int, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.num_tokens, (b, n), generator=g)  # (b, n)


def _run(model: Backbone, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward; a non-deterministic backbone is seeded first so two runs are comparable."""
    if not model.deterministic:
        torch.manual_seed(1234)
    return model(ids, attention_mask=mask)  # (b, n, d)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check_attributes(backbone, **kwargs) -> None:
    """num_tokens / hidden_dim / emb_dim / max_seq_len match the shared names it was built with."""
    kw = {**TINY_KWARGS, **kwargs}
    model = build(backbone, **kwargs)
    expected = dict(num_tokens=kw["num_tokens"], hidden_dim=kw["dim"], max_seq_len=kw["max_seq_len"])
    expected["emb_dim"] = kw.get("emb_dim") or kw["dim"]
    got = {k: getattr(model, k, None) for k in expected}
    assert got == expected, f"attributes {got} != {expected}"


def check_output_shape(backbone, **kwargs) -> None:
    """(b, n, hidden_dim) float and finite for n = 1, 13 (off Reformer's bucket rule) and max_seq_len."""
    model = build(backbone, **kwargs).eval()
    for n in sorted({1, min(13, model.max_seq_len), model.max_seq_len}):
        with torch.no_grad():
            out = _run(model, _ids(model, 2, n))
        assert out.shape == (2, n, model.hidden_dim), f"n={n}: shape {tuple(out.shape)}"
        assert out.is_floating_point() and torch.isfinite(out).all(), (
            f"n={n}: dtype {out.dtype} or non-finite"
        )


def check_emb_dim(backbone, **kwargs) -> None:
    """emb_dim defaults to dim, and emb_dim = dim // 2 works; token weight is (num_tokens, emb_dim)."""
    dim = {**TINY_KWARGS, **kwargs}["dim"]
    for emb_dim in (None, dim // 2):
        model = build(backbone, **{**kwargs, "emb_dim": emb_dim}).eval()
        want = emb_dim or dim
        assert model.emb_dim == want, f"emb_dim={emb_dim}: model.emb_dim is {model.emb_dim}"
        shape = tuple(model.get_token_embedding().weight.shape)
        assert shape == (model.num_tokens, want), f"emb_dim={emb_dim}: token weight {shape}"
        with torch.no_grad():
            out = _run(model, _ids(model, 2, 7))
        assert out.shape == (2, 7, model.hidden_dim), f"emb_dim={emb_dim}: output {tuple(out.shape)}"


def check_gradients(backbone, **kwargs) -> None:
    """Train-mode forward + backward (with padding): every trainable parameter gets a finite gradient."""
    model = build(backbone, **kwargs).train()
    n = model.max_seq_len
    ids, mask = _ids(model, 2, n), torch.ones(2, n, dtype=torch.bool)
    mask[1, n // 2 :] = False
    out = model(ids, attention_mask=mask)  # (b, n, d)
    (out * torch.randn_like(out))[mask].sum().backward()
    missing = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [k for k, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    assert model.get_token_embedding().weight.grad.abs().sum() > 0, "token embedding gradient is all zero"


class DeltaEmbedding(nn.Module):
    """GDES-style embedding (DeBERTa-v3): ``source.weight.detach() + delta``; counts its calls."""

    def __init__(self, source: nn.Module):
        super().__init__()
        self.source = source
        self.delta = nn.Parameter(0.1 * torch.randn_like(source.weight))
        self.calls = 0

    @property
    def weight(self) -> torch.Tensor:
        return self.source.weight.detach() + self.delta

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.embedding(ids, self.weight)  # (b, n, e)


def check_set_token_embedding(backbone, **kwargs) -> None:
    """An installed embedding is used (output changes, it gets gradient); a wrapper module is *called*."""
    model = build(backbone, **kwargs).eval()
    ids = _ids(model, 2, 9)
    old = model.get_token_embedding()
    with torch.no_grad():
        before = _run(model, ids)
    new = nn.Embedding(model.num_tokens, model.emb_dim)
    model.set_token_embedding(new)
    assert model.get_token_embedding() is new, "get_token_embedding() does not return the installed module"
    out = _run(model, ids)
    assert _close(out, before) > 1e-3, "output did not change after set_token_embedding"
    out.pow(2).sum().backward()
    assert new.weight.grad is not None and new.weight.grad[ids].abs().sum() > 0, (
        "new embedding got no gradient"
    )
    assert old.weight.grad is None, "the replaced embedding still receives gradient"

    wrapper = DeltaEmbedding(new)
    model.set_token_embedding(wrapper)
    out = _run(model, ids)
    assert wrapper.calls > 0, "the backbone did not call the installed module (indexes .weight directly?)"
    plain = nn.Embedding.from_pretrained(wrapper.weight.detach().clone(), freeze=False)
    model.set_token_embedding(plain)
    with torch.no_grad():
        ref = _run(model, ids)
    assert _close(out, ref) < ATOL, (
        f"wrapper output differs from its effective weight by {_close(out, ref):.2e}"
    )
    new.weight.grad = None
    out.pow(2).sum().backward()
    assert wrapper.delta.grad is not None and wrapper.delta.grad.abs().sum() > 0, (
        "wrapper delta got no gradient"
    )
    assert new.weight.grad is None, "gradient leaked through the detached source weight"

    model.set_token_embedding(old)
    with torch.no_grad():
        assert _close(_run(model, ids), before) < ATOL, (
            "reinstalling the original embedding changed the output"
        )


def check_position_embedding(backbone, **kwargs) -> str | None:
    """get/set roundtrip of the learnable positional embedding; a replacement is used and trained."""
    model = build(backbone, **kwargs).eval()
    pos = model.get_position_embedding()
    if pos is None:
        return "skipped: no learnable positional embedding"
    assert any(p.requires_grad for p in pos.parameters()), "positional embedding has no trainable weights"
    ids = _ids(model, 2, 9)
    with torch.no_grad():
        before = _run(model, ids)
    model.set_position_embedding(pos)
    assert model.get_position_embedding() is pos
    with torch.no_grad():
        assert _close(_run(model, ids), before) < ATOL, (
            "re-setting the same positional embedding changed output"
        )
    new = copy.deepcopy(pos)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p))
    model.set_position_embedding(new)
    assert model.get_position_embedding() is new
    out = _run(model, ids)
    assert _close(out, before) > 1e-3, "output did not change after set_position_embedding"
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in new.parameters()), "new positional embedding got no gradient"
    assert all(p.grad is None for p in pos.parameters()), (
        "the replaced positional embedding still gets gradient"
    )


def _padding_diffs(model: Backbone) -> list[tuple[str, float]]:
    n, max_len = min(13, model.max_seq_len - 1), model.max_seq_len
    ids = _ids(model, 2, n)  # (2, n)
    diffs = []
    with torch.no_grad():
        alone = _run(model, ids)  # (2, n, d)
        for extra in sorted({3, max_len - n}):
            junk = _ids(model, 2, extra, seed=7)  # padding content must not matter either
            mask = torch.arange(n + extra) < n  # (n + extra,)
            out = _run(model, torch.cat([ids, junk], 1), mask.expand(2, -1))[:, :n]
            diffs.append((f"{n} real + {extra} padding", _close(out, alone)))
        # rows of different lengths in one batch, each against its own unpadded forward
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, n - 4 :] = False
        out = _run(model, ids, mask)
        short = _run(model, ids[1:, : n - 4])
        diffs.append(("ragged batch, full row", _close(out[:1], alone[:1])))
        diffs.append(("ragged batch, short row", _close(out[1:, : n - 4], short)))
    return diffs


def check_padding_invariance(backbone, **kwargs) -> str | None:
    """Eval: real-token states identical (ATOL) whether or not (masked) padding follows."""
    model = build(backbone, **kwargs).eval()
    if not model.honours_padding_mask:
        worst = max(d for _, d in _padding_diffs(model))
        return (
            f"skipped: {type(model).__name__} declares honours_padding_mask=False (max abs diff {worst:.2g})"
        )
    bad = [f"{case}: {d:.2e}" for case, d in _padding_diffs(model) if d > ATOL]
    assert not bad, f"padding changes real-token hidden states: {bad}"


def check_mask_none(backbone, **kwargs) -> None:
    """attention_mask=None means no padding: same output as an all-True mask."""
    model = build(backbone, **kwargs).eval()
    ids = _ids(model, 2, 11)
    with torch.no_grad():
        d = _close(_run(model, ids), _run(model, ids, torch.ones(2, 11, dtype=torch.bool)))
    assert d < ATOL, f"mask=None and an all-True mask differ by {d:.2e}"


def check_max_seq_len(backbone, **kwargs) -> None:
    """A sequence longer than max_seq_len raises ValueError naming max_seq_len."""
    model = build(backbone, **kwargs).eval()
    try:
        model(_ids(model, 1, model.max_seq_len + 1))
    except ValueError as exc:
        assert "max_seq_len" in str(exc), f"ValueError does not name max_seq_len: {exc}"
    except Exception as exc:  # e.g. an IndexError deep inside a positional table
        raise AssertionError(
            f"expected ValueError naming max_seq_len, got {type(exc).__name__}: {exc}"
        ) from exc
    else:
        raise AssertionError(f"no ValueError for a sequence of max_seq_len + 1 = {model.max_seq_len + 1}")


def check_deterministic_flag(backbone, **kwargs) -> None:
    """deterministic=True: two eval forwards are identical; False: they do differ (unseeded)."""
    model = build(backbone, **kwargs).eval()
    ids = _ids(model, 2, model.max_seq_len)
    with torch.no_grad():
        outs = [model(ids) for _ in range(3)]
    same = all(torch.equal(outs[0], o) for o in outs[1:])
    if model.deterministic:
        assert same, (
            f"declares deterministic=True but two eval forwards differ by {_close(outs[0], outs[1]):.2e}"
        )
    else:
        assert not same, "declares deterministic=False but three eval forwards were identical"


CHECKS = (
    check_attributes,
    check_output_shape,
    check_emb_dim,
    check_gradients,
    check_set_token_embedding,
    check_position_embedding,
    check_padding_invariance,
    check_mask_none,
    check_max_seq_len,
    check_deterministic_flag,
)


def check_backbone(backbone: str | Callable[..., Backbone], **kwargs) -> dict[str, str]:
    """Run every check; raises on the first failure, else returns ``{check: "ok" | "skipped: ..."}``."""
    return {check.__name__: check(backbone, **kwargs) or "ok" for check in CHECKS}
