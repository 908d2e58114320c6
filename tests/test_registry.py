"""The backbone registry: entry points, plugins, errors, and the `electra-kit backbones` command."""

import warnings
from importlib.metadata import EntryPoint

import pytest
import torch

import electra_kit.registry as registry
from electra_kit import Backbone, Electra, create_backbone, list_backbones, register_backbone

TINY = dict(num_tokens=50, dim=16, depth=1, heads=1, max_seq_len=16, emb_dim=8)


def test_builtins_are_registered_through_entry_points():
    entries = {e.name: e for e in registry.backbone_entries()}
    for name in ("transformer", "reformer", "performer"):
        assert name in entries
        assert "(built-in)" in entries[name].source
        assert entries[name].target.startswith("electra_kit.backbones.")


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(KeyError) as info:
        create_backbone("transfomer", **TINY)
    message = str(info.value)
    assert "Unknown backbone 'transfomer'" in message and "reformer" in message and "performer" in message


def test_the_repo_plugin_is_installed_and_trains():
    """tests/plugin_pkg is pip-installed by the test set-up; electra-kit knows it only by entry point."""
    entries = {e.name: e for e in registry.backbone_entries()}
    assert "toyconv" in entries, "install the test plugin: pip install ./tests/plugin_pkg"
    assert entries["toyconv"].source.startswith("electra-kit-toy-backbone")
    gen = create_backbone("toyconv", **TINY)
    disc = create_backbone("toyconv", **{**TINY, "dim": 32, "depth": 2})
    model = Electra(gen, disc, mask_token_id=2, pad_token_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(5, 50, (8, 16))
    losses = []
    for step in range(15):
        torch.manual_seed(step)
        loss = model.compute(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_a_plugin_that_fails_to_import_is_a_warning_and_others_still_work(monkeypatch):
    real = registry.entry_points

    def with_broken(group):
        broken = EntryPoint(name="broken", value="no_such_module_xyz:build", group=group)
        return [*real(group=group), broken]

    monkeypatch.setattr(registry, "entry_points", with_broken)
    registry.rediscover()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = list_backbones()
        assert "broken" not in names and "transformer" in names
        text = " ".join(str(w.message) for w in caught)
        assert "'broken'" in text and "no_such_module_xyz" in text
        create_backbone("transformer", **TINY)
    finally:
        monkeypatch.undo()
        registry.rediscover()


def test_register_backbone_at_run_time():
    @register_backbone("test-identity")
    def build(**kw):
        return create_backbone("transformer", **kw)

    try:
        assert "test-identity" in list_backbones()
        model = create_backbone("test-identity", **TINY)
        assert model.backbone_name == "test-identity" and model.backbone_kwargs == TINY
    finally:
        registry._registry.pop("test-identity")


def test_a_builder_that_returns_no_backbone_is_rejected():
    register_backbone("test-bad", lambda **kw: torch.nn.Linear(2, 2))
    try:
        with pytest.raises(TypeError, match="not an electra_kit Backbone"):
            create_backbone("test-bad")
    finally:
        registry._registry.pop("test-bad")


def test_backbone_base_class_is_the_interface():
    assert issubclass(type(create_backbone("transformer", **TINY)), Backbone)


def test_cli_lists_backbones_with_their_source(cli_main, tmp_path):
    out = cli_main("backbones", cwd=tmp_path, check=True)
    lines = out.stdout.splitlines()
    for name in ("transformer", "reformer", "performer", "toyconv"):
        assert any(line.split()[0] == name for line in lines[1:]), out.stdout
    assert "electra-kit-toy-backbone" in out.stdout
