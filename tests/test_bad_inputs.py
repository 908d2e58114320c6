"""Bad inputs, one test per row of docs/troubleshooting.md's table (more rows are in test_run.py).

Each must end with exit code 2, a one-line message naming the culprit and what to do, no traceback,
and no half-written run directory or cache file left behind. They run the CLI's own ``main`` in this
process: an exception it failed to turn into a message would fail the test just as a traceback would.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import corpus_gin, error_lines

TINY = ["tiny.gin", "--no-tracking", "--gin", "train.progress = False"]


@pytest.fixture
def run(cli_main):
    def call(tmp_path, corpus, *args, run_dir="run"):
        return cli_main("run", *corpus_gin(corpus), *TINY, "--run-dir", run_dir, *args, cwd=tmp_path)

    return call


def assert_clean_error(proc, tmp_path, *needles, run_dir="run"):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1] if "error:" not in proc.stderr else proc.stderr
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert not (tmp_path / run_dir).exists() or any((tmp_path / run_dir / "checkpoints").glob("step_*")), \
        "a failed start left a half-made run directory"
    cache = Path(os.environ["ELECTRA_KIT_CACHE"])
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name], "a temporary cache file was left behind"


@pytest.fixture
def corpus(small_corpus):
    return f"{small_corpus}/*.txt"


# ---- configuration ------------------------------------------------------------------------------


def test_binding_of_the_wrong_type(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "train.steps = 'many'")
    assert_clean_error(proc, tmp_path, "train.steps", "'many'", "positive integer")


def test_unknown_configurable(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "trian.steps = 5")
    assert_clean_error(proc, tmp_path, "trian", "--gin")


def test_binding_with_a_syntax_error(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "train.steps = ")
    assert_clean_error(proc, tmp_path, "train.steps = ", "--gin")


def test_macros_defined_by_each_other_in_a_circle(tmp_path, corpus, cache_dir, run):
    """Issue 26.9: gin recursed until Python gave up (a 3,008-line RecursionError)."""
    proc = run(tmp_path, corpus, "--gin", "A = [1, %B]", "--gin", "B = %A", "--gin", "train.steps = %A")
    assert_clean_error(proc, tmp_path, "%A -> %B -> %A", "circle")
    assert len(error_lines(proc.stderr).splitlines()) == 1


def test_a_binding_the_kit_sets_itself_is_refused_by_name(tmp_path, corpus, cache_dir, run):
    """Issue 26.9: ``Electra.mask_token_id`` (the kit passes the tokenizer's [MASK] id) was silently ignored."""
    proc = run(tmp_path, corpus, "--gin", "Electra.mask_token_id = 5", "--gin", "train.steps = 1")
    assert_clean_error(proc, tmp_path, "Electra.mask_token_id", "remove it")


def test_an_unknown_backbone_keyword_names_what_the_backbone_takes(tmp_path, corpus, cache_dir, run):
    """Issue 26.9: x-transformers asserted "unrecognized kwargs" 66 lines deep."""
    proc = run(tmp_path, corpus, "--gin", "backbone.foo = 1", "--gin", "train.steps = 1")
    assert_clean_error(proc, tmp_path, "backbone 'transformer' does not take 'foo'", "it takes num_tokens, dim, depth")
    assert len(error_lines(proc.stderr).splitlines()) == 1


def test_embedding_sizes_that_cannot_be_shared(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "generator/backbone.emb_dim = 16")
    assert_clean_error(proc, tmp_path, "emb_dim=16", "emb_dim=32", "embedding_sharing='none'")


def test_unknown_embedding_sharing_mode(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "Electra.embedding_sharing = 'half'")
    assert_clean_error(proc, tmp_path, "'half'", "tied")


def test_batch_not_divisible_by_accumulation(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "train.grad_accum_steps = 3")
    assert_clean_error(proc, tmp_path, "train.batch_size=8", "grad_accum_steps=3")


def test_sequence_length_too_short_for_cls_and_sep(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "MAX_SEQ_LEN = 2")
    assert_clean_error(proc, tmp_path, "max_seq_len=2")


# ---- data ---------------------------------------------------------------------------------------


def test_jsonl_line_that_is_not_json(tmp_path, cache_dir, run):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n')
    proc = run(tmp_path, str(bad))
    assert_clean_error(proc, tmp_path, "data.jsonl:2")


def test_jsonl_line_without_the_text_field(tmp_path, cache_dir, run):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    proc = run(tmp_path, str(bad))
    assert_clean_error(proc, tmp_path, "data.jsonl:2", "text")


def test_text_file_that_is_not_utf8(tmp_path, cache_dir, run):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Der Bundestag beschließt.\n".encode("latin-1") * 3)
    proc = run(tmp_path, str(bad))
    assert_clean_error(proc, tmp_path, "latin1.txt", "UTF-8")


def test_tokenizer_larger_than_the_model_embedding(tmp_path, corpus, cache_dir, run):
    vocab = tmp_path / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"]
    vocab.write_text("\n".join(specials + [f"word{i}" for i in range(2500)]) + "\n")
    proc = run(tmp_path, corpus, "--gin", f"build_data.tokenizer = '{vocab}'")
    assert_clean_error(proc, tmp_path, "2505", "2000", "num_tokens")


def test_tokenizer_without_a_mask_token(tmp_path, corpus, cache_dir, run):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "state"]) + "\n")
    proc = run(tmp_path, corpus, "--gin", f"build_data.tokenizer = '{vocab}'")
    assert_clean_error(proc, tmp_path, "vocab.txt", "[MASK]")


def test_tokenizer_file_that_does_not_exist(tmp_path, corpus, cache_dir, run):
    proc = run(tmp_path, corpus, "--gin", "build_data.tokenizer = 'missing/tokenizer.json'")
    assert_clean_error(proc, tmp_path, "missing/tokenizer.json")


def test_corpus_too_small_for_one_batch(tmp_path, cache_dir, run):
    small = tmp_path / "small.txt"
    small.write_text("Only a few words of text here.\n")
    proc = run(tmp_path, str(small))
    assert_clean_error(proc, tmp_path, "0 sequences", "larger corpus")


# ---- checkpoints --------------------------------------------------------------------------------


def test_resume_with_a_binding_that_changes_the_model(tmp_path, corpus, cache_dir, run):
    first = run(tmp_path, corpus, "--gin", "train.steps = 10")
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(tmp_path / "run" / "model")
    proc = run(tmp_path, corpus, "--resume", "--gin", "discriminator/backbone.dim = 48")
    assert_clean_error(proc, tmp_path, "discriminator/backbone.dim: 64 -> 48", "only train.steps")


def test_resume_of_a_run_whose_config_file_was_edited(tmp_path, corpus, cache_dir, run):
    first = run(tmp_path, corpus, "--gin", "train.steps = 10")
    assert first.returncode == 0, first.stderr[-2000:]
    own = tmp_path / "run" / "operative_config.gin"
    own.write_text(own.read_text().replace("discriminator/backbone.dim = 64", "discriminator/backbone.dim = 48"))
    proc = run(tmp_path, corpus, "--resume")
    assert_clean_error(proc, tmp_path, "step_00000010", "discriminator/backbone.dim: 64 -> 48")


def test_every_checkpoint_corrupt(tmp_path, corpus, cache_dir, run):
    first = run(tmp_path, corpus, "--gin", "train.steps = 10")
    assert first.returncode == 0, first.stderr[-2000:]
    for manifest in (tmp_path / "run" / "checkpoints").glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["sha256"]["model.safetensors"] = "0" * 64
        manifest.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="unusable"):  # each checkpoint is named as it is passed over
        proc = run(tmp_path, corpus, "--resume")
    assert_clean_error(proc, tmp_path, "nothing to resume", "no intact checkpoint")


# ---- command line -------------------------------------------------------------------------------


def test_run_directory_that_is_not_writable(tmp_path, corpus, cache_dir, run):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run(tmp_path, corpus, run_dir=blocker / "run")
    assert_clean_error(proc, tmp_path, "a_file/run", "which is a file, not a folder", "--run-dir", run_dir=blocker / "run")


def test_unknown_command_line_option(tmp_path, corpus, run):
    proc = run(tmp_path, corpus, "--step", "5")
    assert proc.returncode == 2 and "unrecognized arguments: --step" in proc.stderr
