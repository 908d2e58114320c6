"""The ELECTRA objective: masking statistics, labels, gradient flow, heads, embedding sharing."""

import itertools
import math

import pytest
import torch
from torch import nn

from electra_kit import Electra, create_backbone, list_backbones
from electra_kit.objectives.electra import RawPair
from electra_kit.objectives.masking import choose_positions, corrupt, maskable_tokens

PAD, UNK, MASK, CLS, SEP = 0, 1, 2, 3, 4
V = 64


def tiny(name, dim=16, depth=1, heads=1, emb_dim=8, max_seq_len=32):
    return create_backbone(name, num_tokens=V, dim=dim, depth=depth, heads=heads, max_seq_len=max_seq_len, emb_dim=emb_dim)


def make_electra(gen="transformer", disc="transformer", **kw):
    torch.manual_seed(0)
    kw.setdefault("mask_ignore_token_ids", (CLS, SEP))
    return Electra(tiny(gen), tiny(disc, dim=32, depth=2, heads=2), mask_token_id=MASK, pad_token_id=PAD, **kw)


def batch(b=4, n=32, pad_tail=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, V, (b, n), generator=g)
    x[:, 0], x[:, -1 - pad_tail] = CLS, SEP
    if pad_tail:
        x[:, -pad_tail:] = PAD
    return x, x != PAD


# ---- masking statistics --------------------------------------------------------------------------


def test_mask_rate_matches_mask_prob_over_many_draws():
    torch.manual_seed(1)
    x, attn = batch(b=64, n=32)
    ignore = torch.tensor([PAD, CLS, SEP])
    maskable = maskable_tokens(x, attn, ignore)
    masked = total = 0
    for _ in range(200):
        _, valid = choose_positions(maskable, 0.15)
        masked += int(valid.sum())
        total += int(maskable.sum())
    rate = masked / total
    # 200 draws x 64 rows x ~24 maskable tokens: the standard error is ~0.0005; allow 0.005
    assert abs(rate - 0.15) < 0.005, rate


def test_special_and_pad_tokens_are_never_masked():
    torch.manual_seed(2)
    x, attn = batch(b=32, n=32)
    maskable = maskable_tokens(x, attn, torch.tensor([PAD, CLS, SEP]))
    for _ in range(50):
        positions, valid = choose_positions(maskable, 0.5)
        chosen = positions[valid]
        rows = torch.arange(x.shape[0])[:, None].expand_as(positions)[valid]
        assert maskable[rows, chosen].all()
        assert not torch.isin(x[rows, chosen], torch.tensor([PAD, CLS, SEP])).any()


def test_positions_are_distinct_and_uniform():
    torch.manual_seed(3)
    maskable = torch.ones(1, 10, dtype=torch.bool)
    counts = torch.zeros(10)
    for _ in range(3000):
        positions, valid = choose_positions(maskable, 0.3)
        assert len(set(positions[0].tolist())) == positions.shape[1]
        counts[positions[0][valid[0]]] += 1
    freq = counts / counts.sum()
    assert (freq - 0.1).abs().max() < 0.015, freq


def test_mask_keep_random_ratios():
    torch.manual_seed(4)
    x, attn = batch(b=256, n=32)
    maskable = maskable_tokens(x, attn, torch.tensor([PAD, CLS, SEP]))
    positions, valid = choose_positions(maskable, 0.15)
    pool = torch.arange(5, V)
    out = corrupt(x, positions, valid, mask_token_id=MASK, replace_prob=0.8, random_token_prob=0.1, random_token_pool=pool)
    new = out.corrupted.gather(1, positions)[valid]
    orig = out.labels[valid]
    n = new.numel()
    frac_mask = (new == MASK).float().mean().item()
    frac_keep = (new == orig).float().mean().item()
    # a random draw equals the original with probability 1/59, so "kept" is 0.1 + 0.1/59
    assert abs(frac_mask - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n)
    assert abs(frac_keep - (0.1 + 0.1 / 59)) < 4 * math.sqrt(0.1 * 0.9 / n) + 0.005
    # only masked positions change, and random tokens come from the pool
    changed = out.corrupted != x
    assert not (changed & ~out.as_mask(x.shape[1])).any()
    assert torch.isin(new[(new != MASK) & (new != orig)], pool).all()


def test_random_tokens_never_land_on_pad_or_unmasked_positions():
    model = make_electra(random_token_prob=0.5, replace_prob=0.3, num_tokens=V)
    x, attn = batch(b=16)
    for seed in range(20):
        torch.manual_seed(seed)
        masked = model._mask(x, attn)
        outside = ~masked.as_mask(x.shape[1])
        assert torch.equal(masked.corrupted[outside], x[outside])


# ---- labels --------------------------------------------------------------------------------------


def test_discriminator_labels_mark_exactly_the_replaced_tokens():
    model = make_electra()
    x, attn = batch(b=8)
    torch.manual_seed(5)
    out = model.compute(x, attn)
    # re-derive the discriminator input with the same randomness
    torch.manual_seed(5)
    masked = model._mask(x, attn)
    mask_map = masked.as_mask(x.shape[1])
    labels = out.disc_labels.bool()
    assert not (labels & ~mask_map).any(), "only masked positions can be labelled replaced"
    assert not labels[~attn].any(), "padding is never labelled"


def test_a_correctly_sampled_token_is_labelled_original():
    # A generator that always predicts the original token: every sample equals it -> no label is 1.
    class Oracle(nn.Module):
        def forward(self, ids):
            return torch.full((*ids.shape, V), -1e4)

    x, attn = batch(b=4)
    oracle_gen = Oracle()
    disc = nn.Sequential(nn.Embedding(V, 8), nn.Linear(8, 1))
    model = Electra(oracle_gen, disc, mask_token_id=MASK, pad_token_id=PAD, mask_ignore_token_ids=(CLS, SEP))

    class CheatingPair(RawPair):  # the generator's logits at the masked slots put all mass on the original token
        @staticmethod
        def generator_logits(m, masked, attention_mask, kwargs):
            return torch.nn.functional.one_hot(masked.labels, V).float() * 1e4

    model.pair = CheatingPair
    out = model.compute(x, attn)
    assert out.disc_labels.sum() == 0
    assert out.gen_acc == 1.0


def test_padding_is_excluded_from_every_loss_and_metric():
    model = make_electra()
    x, attn = batch(b=4, pad_tail=6)
    torch.manual_seed(6)
    a = model.compute(x, attn)
    x2 = x.clone()
    x2[~attn] = 7  # different "padding" content, same mask: losses must not change
    torch.manual_seed(6)
    b = model.compute(x2, attn)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)
    assert torch.equal(a.disc_acc, b.disc_acc)


# ---- gradient flow -------------------------------------------------------------------------------


def _grads(module):
    return {n: p.grad.clone() if p.grad is not None else None for n, p in module.named_parameters()}


def test_discriminator_loss_does_not_reach_the_generator_through_the_sample():
    model = make_electra(embedding_sharing="none")
    x, attn = batch()
    out = model.compute(x, attn)
    out.disc_loss.backward()
    for name, p in model.generator.named_parameters():
        assert p.grad is None or p.grad.abs().max() == 0, name
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.discriminator.parameters())


def test_tied_embedding_gets_gradient_from_both_losses():
    model = make_electra(embedding_sharing="tied")
    emb = model.generator.get_token_embedding()
    assert model.discriminator.get_token_embedding() is emb
    x, attn = batch()
    torch.manual_seed(7)
    model.compute(x, attn).mlm_loss.backward()
    from_gen = emb.weight.grad.clone()
    emb.weight.grad = None
    torch.manual_seed(7)
    model.compute(x, attn).disc_loss.backward()
    from_disc = emb.weight.grad.clone()
    assert from_gen.abs().sum() > 0 and from_disc.abs().sum() > 0


def test_gdes_keeps_the_discriminator_loss_off_the_generator_embedding():
    model = make_electra(embedding_sharing="gdes")
    gen_emb = model.generator.get_token_embedding()
    disc_emb = model.discriminator.get_token_embedding()
    assert torch.equal(disc_emb.weight, gen_emb.weight)  # delta starts at zero
    x, attn = batch()
    model.compute(x, attn).disc_loss.backward()
    assert gen_emb.weight.grad is None or gen_emb.weight.grad.abs().max() == 0
    assert disc_emb.delta.grad.abs().sum() > 0
    gen_emb.weight.grad = None
    model.compute(x, attn).mlm_loss.backward()
    assert gen_emb.weight.grad.abs().sum() > 0


def test_sharing_needs_equal_embedding_sizes():
    gen = create_backbone("transformer", num_tokens=V, dim=16, depth=1, heads=1, max_seq_len=32, emb_dim=8)
    disc = create_backbone("transformer", num_tokens=V, dim=32, depth=1, heads=2, max_seq_len=32, emb_dim=16)
    with pytest.raises(ValueError, match="emb_dim=8.*emb_dim=16"):
        Electra(gen, disc)
    Electra(gen, disc, embedding_sharing="none")  # allowed without sharing


def test_unknown_sharing_mode_is_rejected():
    with pytest.raises(ValueError, match="embedding_sharing"):
        make_electra(embedding_sharing="half")


# ---- heads ---------------------------------------------------------------------------------------


def test_masked_only_logits_equal_full_logits_at_masked_positions():
    model = make_electra().eval()
    x, attn = batch()
    torch.manual_seed(8)
    masked = model._mask(x, attn)
    only = model.pair.generator_logits(model, masked, attn, {})  # (b, K, V)
    hidden = model.generator(masked.corrupted, attention_mask=attn)
    full = model.generator_head(hidden)  # (b, n, V) over every position
    at = full.gather(1, masked.positions[..., None].expand(-1, -1, V))
    assert torch.allclose(only, at, atol=1e-5)


def test_generator_head_is_tied_to_the_shared_embedding():
    model = make_electra()
    emb = model.generator.get_token_embedding()
    with torch.no_grad():
        emb.weight.add_(1.0)
    h = torch.randn(1, 3, model.generator.hidden_dim)
    logits = model.generator_head(h)
    expected = nn.functional.linear(
        model.generator_head.norm(nn.functional.gelu(model.generator_head.dense(h))), emb.weight, model.generator_head.bias
    )
    assert torch.allclose(logits, expected)


def test_metrics_are_tensors_without_host_sync():
    out = make_electra().compute(*batch())
    for key, value in out.metrics().items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
    assert 0 <= float(out.disc_precision) <= 1 and 0 <= float(out.disc_recall) <= 1


def test_generator_smaller_than_discriminator_trains():
    model = make_electra()
    assert model.generator.hidden_dim < model.discriminator.hidden_dim
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, attn = batch(b=8)
    first = None
    for step in range(30):
        torch.manual_seed(step)
        loss = model.compute(x, attn).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


# ---- every pair of registered backbones ----------------------------------------------------------


@pytest.mark.parametrize("gen,disc", list(itertools.product(list_backbones(), repeat=2)))
def test_every_backbone_pair_forward_backward(gen, disc):
    model = make_electra(gen, disc)
    x, attn = batch(b=2)
    out = model.compute(x, attn)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    emb = model.generator.get_token_embedding().weight
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    assert all(p.grad is not None for p in model.discriminator_head.parameters())


def test_electra_rejects_a_mix_of_raw_and_registry_modules():
    with pytest.raises(TypeError, match="not one of each"):
        Electra(tiny("transformer"), nn.Linear(2, 2))


@pytest.mark.parametrize("kw", [{"mask_prob": 0.0}, {"replace_prob": 0.9, "random_token_prob": 0.2}, {"temperature": 0}])
def test_bad_probabilities_are_rejected(kw):
    with pytest.raises(ValueError):
        make_electra(**kw)
