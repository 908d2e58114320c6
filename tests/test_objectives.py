"""Objectives: the interface, the registry (entry-point group ``electra_kit.objectives``), a third
objective from a test package trained through the CLI, and MaskedLM / mlm_small.gin end to end."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import corpus_gin

import electra_kit
from electra_kit.modelfolder.pretrained import load_pretrained, read_config
from electra_kit.objectives.base import Objective, resolve_objective
from electra_kit.registry import get_objective, list_objectives, objective_entries

PACKAGE = Path(electra_kit.__file__).resolve().parent
SMALL = ["--gin", "train.progress = False", "--gin", "TRAIN_STEPS = 30", "--gin", "BATCH_SIZE = 8",
         "--gin", "MAX_SEQ_LEN = 64", "--gin", "VOCAB_SIZE = 2000", "--gin", "train.warmup_steps = 3",
         "--gin", "train.log_every = 5", "--gin", "train.eval_every = 15", "--gin", "train.eval_batches = 2",
         "--gin", "train.checkpoint_every = 10", "--gin", "backbone.emb_dim = 32",
         "--gin", "discriminator/backbone.dim = 64", "--gin", "discriminator/backbone.depth = 2",
         "--gin", "discriminator/backbone.heads = 2"]


@pytest.fixture
def run_main(cli_main):
    """``electra-kit run ...`` in this process (the CLI's own entry point, no new interpreter); its exit code."""
    return lambda *args, cwd, corpus: cli_main("run", "--no-tracking", *corpus_gin(corpus), *args, cwd=cwd).returncode


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_builtin_objectives_come_through_the_entry_point_group():
    entries = {e.name: e for e in objective_entries()}
    assert entries["electra"].target == "electra_kit.objectives.electra:Electra" and "(built-in)" in entries["electra"].source
    assert entries["mlm"].target == "electra_kit.objectives.mlm:MaskedLM"
    assert get_objective("electra") is electra_kit.Electra and resolve_objective("mlm") is electra_kit.MaskedLM
    assert issubclass(electra_kit.Electra, Objective) and issubclass(electra_kit.MaskedLM, Objective)


def test_unknown_objective_and_a_non_objective_are_named():
    with pytest.raises(KeyError, match=r"Unknown objective 'mlmm'; available: electra, mlm"):
        get_objective("mlmm")
    with pytest.raises(TypeError, match="is not an electra_kit Objective"):
        resolve_objective(torch.nn.Linear)


def test_runner_trainer_and_model_folder_name_no_concrete_objective():
    """Only the objectives themselves may know Electra or MaskedLM by name."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("electra.py", "mlm.py", "__init__.py"):
            continue
        text = path.read_text()
        if re.search(r"isinstance\([^)]*(Electra|MaskedLM)", text) or re.search(r"import[^\n]*\b(Electra|MaskedLM)\b", text):
            offenders.append(path.name)
    assert offenders == []


def test_a_third_objective_from_a_test_package_trains_through_the_cli(tmp_path, small_corpus, cache_dir, run_main):
    """tests/plugin_pkg registers `random_rtd` by entry point only; nothing in electra_kit/ names it."""
    assert "random_rtd" in list_objectives(), "install the test plugin: pip install ./tests/plugin_pkg"
    (tmp_path / "rtd.gin").write_text(
        "include 'base.gin'\ninclude 'backbone_transformer.gin'\ninclude 'size_tiny.gin'\n"
        "pretrain.objective = 'random_rtd'\nRandomTokenDetection.encoder = @discriminator/backbone()\n"
        "RandomTokenDetection.replace_prob = 0.3\n"
    )
    assert run_main("rtd.gin", *SMALL, "--run-dir", "run", cwd=tmp_path, corpus=small_corpus) == 0
    run_dir = tmp_path / "run"
    config = read_config(run_dir / "model")
    assert config["objective"] == "RandomTokenDetection" and "generator" not in config
    assert sorted(p.name for p in (run_dir / "model").glob("*.safetensors")) == ["encoder.safetensors",
                                                                                 "encoder_head.safetensors"]
    history = logged(run_dir)
    train = [h["train/detect_acc"] for h in history if "train/detect_acc" in h]
    assert len(train) == 6 and any("eval/detect_acc" in h for h in history)
    hidden, _ = load_pretrained(run_dir / "model").encode(["The union is strong."])
    assert torch.isfinite(hidden).all()


def test_masked_lm_with_mlm_small_gin_end_to_end(tmp_path, small_corpus, cache_dir, run_main):
    """mlm_small.gin (shrunk by bindings only) trains MaskedLM: its loss falls and the folder holds
    the encoder and its LM head, no generator."""
    assert run_main("mlm_small.gin", *SMALL, "--gin", "train.lr = 2e-3", "--run-dir", "run", cwd=tmp_path,
                    corpus=small_corpus) == 0
    run_dir = tmp_path / "run"
    config = read_config(run_dir / "model")
    assert config["objective"] == "MaskedLM" and "generator" not in config and "embedding_sharing" not in config
    assert not (run_dir / "model" / "generator.safetensors").exists()
    assert (run_dir / "model" / "encoder_head.safetensors").is_file()
    history = logged(run_dir)
    losses = [h["train/gen_loss"] for h in history if "train/gen_loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses  # from ~ln(2000) = 7.6 nats (7.07 measured)
    evals = [h for h in history if "eval/gen_acc" in h]
    assert len(evals) == 2 and "eval/disc_auc" not in evals[-1]
    assert (run_dir / "operative_config.gin").read_text().count("pretrain.objective = @MaskedLM") == 1
    encoder = load_pretrained(run_dir / "model")
    assert encoder.hidden_dim == 64


def test_register_objective_at_run_time():
    import electra_kit.registry as registry
    from electra_kit import register_objective

    @register_objective("test-mlm-alias")
    class Alias(electra_kit.MaskedLM):
        pass

    try:
        assert "test-mlm-alias" in list_objectives() and resolve_objective("test-mlm-alias") is Alias
    finally:
        registry._objectives.entries.pop("test-mlm-alias")
