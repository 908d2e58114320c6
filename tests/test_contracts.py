"""API contracts checked where they are crossed: a backbone's output entering an objective (shape, ids), and
the part of a model folder ``load_pretrained`` is asked for."""

from pathlib import Path

import pytest
import torch
from torch import nn

import electra_kit.registry as registry
from electra_kit import Electra, MaskedLM, create_backbone, register_backbone
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained
from electra_kit.objectives.contracts import BackboneContractError
from electra_kit.testing import TINY_KWARGS as TINY

IDS = torch.randint(5, TINY["num_tokens"], (2, 12))


class Trimmed:
    """A backbone's forward returning hidden states of another shape: one token short, or narrower."""

    def __init__(self, backbone, *, drop_tokens=0, drop_dims=0):
        self.drop_tokens, self.drop_dims, self.original = drop_tokens, drop_dims, backbone.forward

    def __call__(self, input_ids, attention_mask=None):
        hidden = self.original(input_ids, attention_mask=attention_mask)  # (b, n, d)
        return hidden[:, : hidden.shape[1] - self.drop_tokens, : hidden.shape[2] - self.drop_dims]


@pytest.fixture
def broken():
    """Backbones registered as 'short' (one token short) and 'narrow' (hidden_dim - 8 wide)."""
    def builder(**trim):
        def build(**kw):
            model = create_backbone("transformer", **kw)
            model.forward = Trimmed(model, **trim)
            return model
        return build

    register_backbone("short", builder(drop_tokens=1))
    register_backbone("narrow", builder(drop_dims=8))
    yield
    registry._registry.pop("short")
    registry._registry.pop("narrow")


def test_a_generator_one_token_short_is_named_not_silently_trained(broken):
    model = Electra(create_backbone("short", **TINY), create_backbone("transformer", **TINY))
    with pytest.raises(BackboneContractError) as info:
        model.compute(IDS)
    message = str(info.value)
    assert "generator backbone 'short'" in message and "(2, 11, 32)" in message and "(2, 12, 32)" in message
    assert "\n" not in message


def test_a_discriminator_of_the_wrong_width_is_named_not_a_matmul_error(broken):
    model = Electra(create_backbone("transformer", **TINY), create_backbone("narrow", **TINY))
    with pytest.raises(BackboneContractError, match=r"discriminator backbone 'narrow' \(.*\) returned hidden states "
                                                    r"\(batch, seq, hidden_dim\) of shape \(2, 12, 24\); expected \(2, 12, 32\)"):
        model.compute(IDS)


def test_masked_lm_checks_its_encoder_too(broken):
    with pytest.raises(BackboneContractError, match="encoder backbone 'short'"):
        MaskedLM(create_backbone("short", **TINY)).compute(IDS)


def test_ids_beyond_the_vocabulary_are_named_not_a_bare_index_error():
    ids = IDS.clone()
    ids[1, 3] = TINY["num_tokens"] + 7
    for model in (Electra(create_backbone("transformer", **TINY), create_backbone("transformer", **TINY)),
                  MaskedLM(create_backbone("transformer", **TINY))):
        with pytest.raises(BackboneContractError, match=rf"token id {TINY['num_tokens'] + 7} is outside the vocabulary "
                                                        rf"of the \w+ backbone 'transformer' .*64 tokens \(ids 0\.\.63\)"):
            model.compute(ids)
    with pytest.raises(BackboneContractError, match="integer token ids"):
        MaskedLM(create_backbone("transformer", **TINY)).compute(IDS.float())


def test_a_raw_generator_with_the_wrong_logits_is_named():
    """The electra-pytorch form (two raw modules): the generator must give (b, n, vocabulary) logits."""
    class Bad(nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 5)  # 5 is not the vocabulary

    disc = nn.Sequential(nn.Embedding(64, 8), nn.Linear(8, 1))
    with pytest.raises(BackboneContractError, match=r"the generator Bad returned vocabulary logits .*\(2, 12, 5\); "
                                                    r"expected \(2, 12, 64\)"):
        Electra(Bad(), disc, num_tokens=64).compute(IDS)


# ---- load_pretrained(part=...) --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def electra_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = Electra(create_backbone("transformer", **{**TINY, "dim": 16}), create_backbone("transformer", **TINY))
    return save_pretrained(model, tmp_path_factory.mktemp("electra") / "model"), model


def test_discriminator_is_the_encoder_and_generator_the_generator(electra_folder):
    folder, model = electra_folder
    disc = load_pretrained(folder, part="discriminator")
    assert disc.hidden_dim == TINY["dim"] and torch.equal(disc(IDS), load_pretrained(folder)(IDS))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(disc(IDS), model.discriminator(IDS), atol=1e-6)
        assert torch.allclose(load_pretrained(folder, part="generator")(IDS), model.generator(IDS), atol=1e-6)


def test_an_unknown_part_is_refused_naming_the_parts_there(electra_folder, tmp_path):
    folder, _ = electra_folder
    with pytest.raises(ValueError, match=r"part='disc'.*holds the parts 'encoder', 'discriminator', 'generator'$"):
        load_pretrained(folder, part="disc")
    mlm = save_pretrained(MaskedLM(create_backbone("transformer", **TINY)), tmp_path / "mlm")
    with pytest.raises(ValueError, match=r"part='generator'.*\(MaskedLM folder\) holds the parts 'encoder'$"):
        load_pretrained(mlm, part="generator")
    with pytest.raises(ValueError, match="holds the parts 'encoder'$"):
        load_pretrained(mlm, part="discriminator")


def test_a_generator_file_without_the_backbone_is_damaged_not_random_weights(electra_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(electra_folder[0], tmp_path / "model"))
    heads = {k: v for k, v in load_file(folder / "generator.safetensors").items() if k.startswith("head.")}
    save_file(heads, folder / "generator.safetensors")
    with pytest.raises(ValueError, match=r"generator\.safetensors: holds no weights for \d+ of the generator backbone"):
        load_pretrained(folder, part="generator")


def test_the_id_check_reads_no_value_off_an_accelerator_tensor():
    """Off the CPU the ids are not read (that would be a host sync per step): a meta tensor, which has no values
    to read, passes; build_objective checked the data's vocabulary against the backbones once instead."""
    from electra_kit.objectives.contracts import check_input_ids

    backbone = create_backbone("transformer", **TINY)
    check_input_ids(torch.full((2, 12), 10_000, dtype=torch.long, device="meta"), TINY["num_tokens"], backbone, "encoder")
    with pytest.raises(BackboneContractError):
        check_input_ids(torch.full((2, 12), 10_000, dtype=torch.long), TINY["num_tokens"], backbone, "encoder")
