"""The throughput benchmark runs (tiny size, no timing assertions), and the fast paths it measured
keep the objective's behaviour: the sampler's distribution, the no-padding backbone path, the
Reformer feed-forward chunking."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from electra_kit import Electra, create_backbone, list_backbones
from electra_kit.objectives.masking import sample_categorical

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--steps", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| case |" in proc.stdout
    result = json.loads(out.read_text())
    names = set(result["rows"])
    assert {f"kit/{b}" for b in ("transformer", "reformer", "performer")} <= names
    for row in result["rows"].values():
        assert row["tokens_per_s"] > 0
        assert row["memory_bytes"] is None or row["memory_bytes"] > 0
    # peers are optional at the tiny size: present when installed, skipped with a note otherwise
    import importlib.util

    if importlib.util.find_spec("electra_pytorch") is not None:
        assert "orig/transformer" in names
        assert "kit/transformer vs orig/transformer" in result["ratios"]
    else:
        assert "note: skipping a peer" in proc.stdout


def test_sample_categorical_draws_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, float("-inf")]]).expand(20000, 5)  # (rows, V)
    for temperature in (1.0, 0.5):
        draws = sample_categorical(logits, temperature)  # (rows,)
        freq = torch.bincount(draws, minlength=5).float() / draws.numel()
        expected = torch.softmax(logits[0] / temperature, dim=-1)
        assert (freq - expected).abs().max() < 0.015, (temperature, freq, expected)
        assert freq[4] == 0  # a zero-probability entry is never drawn


def test_sample_categorical_keeps_leading_dims():
    logits = torch.randn(3, 4, 50)
    assert sample_categorical(logits, 1.0).shape == (3, 4)
    assert sample_categorical(logits, 1.0).max() < 50


def _pair(name):
    kw = dict(num_tokens=64, heads=2, max_seq_len=32, emb_dim=16)
    torch.manual_seed(0)
    g, d = create_backbone(name, dim=16, depth=1, **kw), create_backbone(name, dim=32, depth=2, **kw)
    return Electra(g, d, mask_token_id=2, pad_token_id=0, mask_ignore_token_ids=(3, 4))


@pytest.mark.parametrize("name", [b for b in ("transformer", "reformer", "performer") if b in list_backbones()])
def test_padding_free_batches_skip_the_backbone_mask_with_the_same_result(name, monkeypatch):
    model = _pair(name).train()
    ids = torch.randint(5, 64, (3, 32))
    ids[:, 0], ids[:, -1] = 3, 4
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert Electra._backbone_mask(mask) is None
    assert Electra._backbone_mask(torch.cat([mask[:, :-1], ~mask[:, -1:]], 1)) is not None
    torch.manual_seed(1)
    fast = model.compute(ids, mask)
    monkeypatch.setattr(Electra, "_backbone_mask", staticmethod(lambda m: m))
    torch.manual_seed(1)
    masked = model.compute(ids, mask)
    assert torch.allclose(fast.loss, masked.loss, atol=1e-5), (fast.loss, masked.loss)
    assert torch.allclose(fast.disc_logits, masked.disc_logits, atol=1e-4)


def test_reformer_feed_forward_chunking_does_not_change_values():
    kw = dict(num_tokens=64, dim=32, depth=2, heads=2, max_seq_len=64, emb_dim=16, use_full_attn=True)
    torch.manual_seed(0)
    one = create_backbone("reformer", **kw).eval()
    chunks = {m.chunks for m in one.modules() if type(m).__name__ == "Chunk"}
    assert chunks == {1}, chunks  # our default below 1024 positions
    torch.manual_seed(0)
    many = create_backbone("reformer", ff_chunks=100, **kw).eval()
    ids = torch.randint(1, 64, (2, 64))
    with torch.no_grad():
        assert torch.allclose(one(ids), many(ids), atol=1e-5)


def test_drawn_ahead_noise_gives_the_same_step():
    """What a compiled step does with the trainer's generator (draw first, then consume) changes nothing."""
    from electra_kit.objectives.noise import Noise, draw_ahead

    model = _pair("transformer").train()
    model.random_token_prob, model.replace_prob = 0.1, 0.8
    model.register_buffer("random_token_pool", torch.arange(5, 64), persistent=False)
    ids = torch.randint(5, 64, (4, 32))
    direct = model.compute(ids, noise=Noise(torch.Generator().manual_seed(7)))
    drawn = draw_ahead(Noise(torch.Generator().manual_seed(7)), model._noise_plan(4, 32), ids.device)
    ahead = model.compute(ids, noise=drawn)
    assert torch.equal(direct.disc_labels, ahead.disc_labels)
    assert torch.allclose(direct.loss, ahead.loss)
    assert not drawn._tensors  # every planned draw was used


def test_the_objective_compiles_to_one_graph_with_an_explicit_generator():
    import torch._dynamo as dynamo

    from electra_kit.objectives.noise import Noise

    model = _pair("transformer").train()
    ids = torch.randint(5, 64, (2, 32))
    dynamo.reset()
    explained = dynamo.explain(model)(ids, ids != 0, return_output=True, noise=Noise(torch.Generator().manual_seed(0)))
    dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
