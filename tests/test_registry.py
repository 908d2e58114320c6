"""The backbone registry: entry points, plugins, errors, and the `electra-kit backbones` command."""

import sys
import warnings

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


def install_plugin(root, dist: str, modules: dict[str, str], **groups: dict[str, str]):
    """A real distribution on ``sys.path`` (a dist-info with entry_points.txt) and its modules, in ``root``:
    electra-kit finds it through importlib.metadata exactly as it finds a pip-installed plugin."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[electra_kit.{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
        for group, eps in groups.items()))
    for module, code in modules.items():
        (root / f"{module}.py").write_text(code)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Plugins that exit, raise, or take a built-in's name; the registry is read again around the test."""
    install_plugin(tmp_path, "exiting-plugin", {"exits_on_import": "import sys\nsys.exit(3)\n"},
                   backbones={"exits": "exits_on_import:build"})
    install_plugin(tmp_path, "raising-plugin", {"raises_on_import": "raise RuntimeError('plugin is broken')\n"},
                   backbones={"raises": "raises_on_import:build"}, objectives={"raising_obj": "raises_on_import:Obj"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.rediscover()
    yield
    monkeypatch.undo()
    registry.rediscover()
    for module in ("exits_on_import", "raises_on_import"):
        sys.modules.pop(module, None)


def test_listing_reads_entry_point_metadata_and_imports_no_plugin(plugins):
    entries = {e.name: e for e in registry.backbone_entries()}
    assert entries["exits"].source == "exiting-plugin 1.0" and entries["exits"].target == "exits_on_import:build"
    assert {"raises", "transformer", "toyconv"} <= set(entries)
    assert not {"exits_on_import", "raises_on_import"} & set(sys.modules), "listing imported a plugin"


def test_cli_lists_backbones_although_a_plugin_exits_on_import(plugins, cli_main, tmp_path):
    out = cli_main("backbones", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()[1:]]
    assert {"exits", "raises", "transformer", "reformer"} <= set(names)


def test_a_plugin_that_fails_to_import_is_named_when_used_and_others_still_work(plugins):
    with pytest.raises(registry.PluginLoadError) as info:
        create_backbone("exits", **TINY)  # sys.exit(3) in the plugin's import: an error, not the end of the process
    message = str(info.value)
    assert "'exits'" in message and "exiting-plugin 1.0" in message and "SystemExit: 3" in message
    assert "\n" not in message
    with pytest.raises(registry.PluginLoadError, match=r"'raises' .*raising-plugin 1\.0.*RuntimeError: plugin is broken"):
        create_backbone("raises", **TINY)
    create_backbone("toyconv", **TINY)


def test_an_objective_plugin_that_fails_to_import_is_a_warning_and_the_others_load(plugins):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [e.name for e in registry.objective_entries()]
    assert "raising_obj" not in names and {"electra", "mlm", "random_rtd"} <= set(names)
    text = " ".join(str(w.message) for w in caught)
    assert "'raising_obj'" in text and "raising-plugin 1.0" in text and "RuntimeError: plugin is broken" in text


@pytest.fixture(params=["before", "after"])
def shadowing_plugin(request, tmp_path, monkeypatch):
    """A plugin whose entry point takes the built-in name 'transformer', found before or after electra-kit."""
    install_plugin(tmp_path, "shadow-plugin", {"shadows_builtin": "def build(**kw):\n    raise AssertionError('used')\n"},
                   backbones={"transformer": "shadows_builtin:build"})
    if request.param == "before":
        monkeypatch.syspath_prepend(str(tmp_path))
    else:
        monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    registry.rediscover()
    yield
    monkeypatch.undo()
    registry.rediscover()
    sys.modules.pop("shadows_builtin", None)


def test_a_plugin_never_replaces_a_builtin(shadowing_plugin):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = {e.name: e for e in registry.backbone_entries()}["transformer"]
    assert entry.builtin and entry.target == "electra_kit.backbones.transformer:build_transformer"
    text = " ".join(str(w.message) for w in caught)
    assert "shadow-plugin 1.0" in text and "'transformer'" in text and "the built-in is used" in text
    model = create_backbone("transformer", **TINY)
    assert type(model).__module__ == "electra_kit.backbones.transformer" and "shadows_builtin" not in sys.modules


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
