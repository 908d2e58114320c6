"""Every configured value is checked before anything is built; each error is one line naming its binding."""

import json

import pytest
import torch
from conftest import error_lines, tiny_args

from electra_kit.cli import main
from electra_kit.objectives.electra import Electra
from electra_kit.objectives.mlm import MaskedLM
from electra_kit.registry import create_backbone
from electra_kit.rundir import checkpoint as ckpt

BAD_BINDINGS = [
    ("MAX_SEQ_LEN = 'abc'", "build_data.max_seq_len='abc'"),
    ("train.lr = 'fast'", "train.lr='fast'"),
    ("build_data.corpus = 5", "build_data.corpus=5"),
    ("train.eval_every = 0", "train.eval_every=0"),
    ("train.eval_batches = -1", "train.eval_batches=-1"),
    ("train.device = 'tpu'", "train.device='tpu'"),
    ("train.warmup_steps = -5", "train.warmup_steps=-5"),
    ("train.weight_decay = 'x'", "train.weight_decay='x'"),
    ("train.adam_betas = (0.9,)", "train.adam_betas=(0.9,)"),
    ("train.max_grad_norm = -1", "train.max_grad_norm=-1"),
    ("train.lr = float('nan')", "in --gin binding"),
    ("train.compile = 'yes'", "train.compile='yes'"),
    ("train.seed = 'a'", "train.seed='a'"),
    ("train.steps = 2.5", "train.steps=2.5"),
    ("train.strategy = 'zero'", "train.strategy='zero'"),
    ("build_data.vocab_size = 'big'", "build_data.vocab_size='big'"),
    ("build_data.eval_fraction = 2.0", "build_data.eval_fraction=2.0"),
    ("build_data.lowercase = 'no'", "build_data.lowercase='no'"),
    ("build_data.cache_dir = 5", "build_data.cache_dir=5"),
    ("build_data.text_field = ''", "build_data.text_field=''"),
    ("train.steps = %NOPE", "train.steps uses the macro %NOPE"),
    ("generator/backbone.depth = %DEPTH", "generator/backbone.depth uses the macro %DEPTH"),
]


def run_cli(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)
    return main(["run", *tiny_args(), "--run-dir", "r", *args])


@pytest.mark.parametrize("binding, named", BAD_BINDINGS, ids=[b for b, _ in BAD_BINDINGS])
def test_a_bad_binding_is_one_line_naming_it_before_anything_is_built(tmp_path, monkeypatch, capsys, cache_dir,
                                                                      small_corpus, binding, named):
    code = run_cli(tmp_path, monkeypatch, "--gin", f"build_data.corpus = '{small_corpus}/*.txt'", "--gin", binding)
    err = error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / "r").exists()


def test_a_gin_file_that_includes_itself_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "loop.gin").write_text("include 'loop.gin'\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "loop.gin", "--no-tracking", "--run-dir", "r"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "cycle: loop.gin -> loop.gin" in err


def test_a_cycle_of_includes_is_one_line_naming_the_cycle(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.gin").write_text("include 'tiny.gin'\ninclude 'b.gin'\n")
    (tmp_path / "b.gin").write_text("include 'c.gin'\n")
    (tmp_path / "c.gin").write_text("include 'a.gin'\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "a.gin", "--no-tracking", "--run-dir", "r"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "a.gin -> b.gin -> c.gin -> a.gin" in err


def test_an_unwritable_cache_is_reported_before_the_vocabulary_is_trained(tmp_path, monkeypatch, capsys, small_corpus):
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    code = run_cli(tmp_path, monkeypatch, "--gin", f"build_data.corpus = '{small_corpus}/*.txt'",
                   "--gin", f"build_data.cache_dir = '{tmp_path}/blocker/cache'")
    assert code == 2 and "cache folder" in capsys.readouterr().err


# ---- special token ids --------------------------------------------------------------------------


def backbone():
    return create_backbone("transformer", num_tokens=50, dim=16, depth=1, heads=1, max_seq_len=16)


@pytest.mark.parametrize("kwargs, named", [
    ({"mask_token_id": 50}, "mask_token_id=50 is outside the vocabulary of 50"),
    ({"pad_token_id": 1000}, "pad_token_id=1000 is outside"),
    ({"pad_token_id": -1}, "pad_token_id=-1"),
    ({"mask_ignore_token_ids": (3, 99)}, "mask_ignore_token_ids=(3, 99)"),
])
def test_special_token_ids_outside_the_vocabulary_fail_at_construction(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Electra(backbone(), backbone(), **kwargs)
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        MaskedLM(backbone(), **kwargs)


# ---- the checkpoint manifest is never trusted ---------------------------------------------------


def write_two_checkpoints(tmp_path):
    state = {"w": torch.zeros(2)}
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, model_state=state, torch_state={}, trainer_state={"step": step},
                             operative_config="")
    return tmp_path / "step_00000002" / ckpt.MANIFEST


@pytest.mark.parametrize("manifest", [
    [1, 2, 3],
    "just a string",
    {"step": 2},
    {"step": 2, "sha256": ["model.safetensors"]},
    {"step": 2, "sha256": {"model.safetensors": 5}},
    {"step": 2, "sha256": {}},
    "LISTS_ONLY_THE_WEIGHTS",
    "NAMES_A_FILE_OUTSIDE",
    "OTHER_STEP",
], ids=["list", "string", "no-sums", "sums-a-list", "sum-not-text", "empty-sums", "lists-only-weights",
        "names-a-file-outside", "other-step"])
def test_a_manifest_of_the_wrong_shape_marks_the_checkpoint_invalid(tmp_path, manifest):
    path = write_two_checkpoints(tmp_path)
    good = json.loads(path.read_text())
    if manifest == "LISTS_ONLY_THE_WEIGHTS":
        manifest = {"step": 2, "sha256": {"model.safetensors": good["sha256"]["model.safetensors"]}}
    elif manifest == "NAMES_A_FILE_OUTSIDE":
        manifest = {"step": 2, "sha256": {**good["sha256"], "../step_00000001/state.pt": "0" * 64}}
    elif manifest == "OTHER_STEP":
        manifest = {**good, "step": 7}
    path.write_text(json.dumps(manifest))
    assert ckpt.verify(path.parent) is not None
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert ckpt.latest_valid_checkpoint(tmp_path).name == "step_00000001"


def test_an_include_cycle_started_from_a_command_line_binding_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "loop.gin").write_text("include 'loop.gin'\n")
    code = run_cli(tmp_path, monkeypatch, "--gin", "include 'loop.gin'")
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err.splitlines()) == 1 and "cycle" in err
