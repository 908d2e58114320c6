"""``--resume`` restores the run it names: its own config, its own tokenizer, its own data; never a rebuilt one."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest
from conftest import cli_argv, cli_env, corpus_gin, run_cli, tiny_args
from safetensors.torch import load_file

from electra_kit.rundir import checkpoint as ckpt

TINY = tiny_args("train.checkpoint_every = 5")


def cli(cwd, *args, cache, check=True):
    """``electra-kit run ARGS`` in a new interpreter with its own cache."""
    return run_cli("run", *args, cwd=cwd, env=cli_env(ELECTRA_KIT_CACHE=str(cache)), check=check)


@pytest.fixture
def refused(cli_main, monkeypatch):
    """A resume that must be refused (exit 2): ``cli.main`` in this process; returns its stderr."""

    def call(cwd, *args, cache):
        monkeypatch.setenv("ELECTRA_KIT_CACHE", str(cache))
        proc = cli_main("run", *args, cwd=cwd)
        assert proc.returncode == 2, proc.stderr[-2000:]
        return proc.stderr

    return call


def new_run(cwd, corpus, run_dir, *args, cache):
    return cli(cwd, *TINY, *corpus_gin(corpus), "--gin", "train.steps = 10",
               *args, "--run-dir", run_dir, cache=cache)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_corpus):
    """A finished 10-step run with its own copy of the corpus and its own cache."""
    root = tmp_path_factory.mktemp("resume")
    shutil.copytree(small_corpus, root / "corpus")
    new_run(root, root / "corpus", "r", cache=root / "cache")
    return root


def copy_run(finished, tmp_path):
    shutil.copytree(finished / "r", tmp_path / "r")
    return tmp_path / "r"


def vocab_of(path):
    return json.loads(path.read_text())["model"]["vocab"]


def test_resume_uses_the_tokenizer_its_checkpoint_carries_not_the_cache(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    carried = vocab_of(run / "checkpoints" / "step_00000010" / ckpt.TOKENIZER_FILE)
    # another machine, or a retrained cache: the same corpus gives a vocabulary with other ids
    cache = tmp_path / "cache"
    shutil.copytree(finished / "cache", cache)
    for cached in cache.glob("tokenizers/*/tokenizer.json"):
        tok = json.loads(cached.read_text())
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[100:102]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        cached.write_text(json.dumps(tok))
    cli(tmp_path, "--run-dir", "r", "--resume", "--no-tracking", "--gin", "train.steps = 12", cache=cache)
    assert vocab_of(run / "model" / "tokenizer.json") == carried
    assert vocab_of(run / "checkpoints" / "step_00000012" / ckpt.TOKENIZER_FILE) == carried


@pytest.mark.parametrize("binding, named", [
    ("MAX_SEQ_LEN = 32", "build_data.max_seq_len: 64 -> 32"),
    ("train.lr = 0.1", "train.lr"),
    ("build_data.corpus = 'elsewhere/*.txt'", "build_data.corpus"),
    ("build_data.tokenizer = 'vocab.txt'", "build_data.tokenizer"),
    ("generator/backbone.depth = 3", "generator/backbone.depth"),
])
def test_resume_refuses_bindings_that_would_change_the_run(finished, binding, named, refused):
    before = sorted(p.name for p in (finished / "r" / "checkpoints").iterdir())
    err = refused(finished, "--run-dir", "r", "--resume", "--no-tracking", "--gin", binding, cache=finished / "cache")
    assert named in err and "only train.steps" in err
    assert sorted(p.name for p in (finished / "r" / "checkpoints").iterdir()) == before


def test_resume_applies_and_lists_the_changes_it_allows(finished, tmp_path):
    copy_run(finished, tmp_path)
    proc = cli(tmp_path, "--run-dir", "r", "--resume", "--no-tracking", "--gin", "train.steps = 12",
               "--gin", "train.log_every = 1", cache=finished / "cache")
    assert "--resume: train.steps: 10 -> 12" in proc.stderr and "--resume: train.log_every: 5 -> 1" in proc.stderr
    assert ckpt.latest_valid_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000012"


def test_resume_cannot_shorten_a_run_below_what_is_trained(finished, refused):
    err = refused(finished, "--run-dir", "r", "--resume", "--no-tracking", "--gin", "train.steps = 5",
                  cache=finished / "cache")
    assert "train.steps=5 is below the 10 steps" in err


def test_resume_with_other_config_files_than_the_run_used_is_refused(finished, refused):
    err = refused(finished, "mlm_small.gin", "--run-dir", "r", "--resume", "--no-tracking", cache=finished / "cache")
    assert "not the ones it ran with" in err


def test_resume_continues_after_a_touch_of_the_corpus_but_refuses_changed_text(finished, tmp_path):
    copy_run(finished, tmp_path)
    for f in (finished / "corpus").iterdir():
        os.utime(f)  # new mtimes: the token file is rebuilt, with the run's own tokenizer: same ids
    cli(tmp_path, "--run-dir", "r", "--resume", "--no-tracking", "--gin", "train.steps = 11", cache=finished / "cache")
    first = sorted((finished / "corpus").iterdir())[0]
    original = first.read_bytes()
    try:
        first.write_bytes(original + b"\nA paragraph that was not there when the run began.\n")
        proc = cli(tmp_path, "--run-dir", "r", "--resume", "--no-tracking", "--gin", "train.steps = 12",
                   cache=finished / "cache", check=False)
    finally:
        first.write_bytes(original)
    assert proc.returncode == 2 and "training data differ" in proc.stderr, proc.stderr[-2000:]
    assert ckpt.latest_valid_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000011"


def test_the_continue_line_printed_on_sigterm_resumes_exactly_that_run(tmp_path, small_corpus, cache_dir):
    args = [*TINY, *corpus_gin(small_corpus), "--gin", "train.steps = 40",
            "--gin", "Electra.mask_prob = 0.2"]  # a binding the old "Continue with" line dropped
    cli(tmp_path, *args, "--run-dir", "straight", cache=cache_dir)
    proc = subprocess.Popen(cli_argv("run", *args, "--run-dir", "stopped"), cwd=tmp_path,
                            env=cli_env(ELECTRA_KIT_CACHE=str(cache_dir)), stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "stopped" / "checkpoints"
    deadline = time.time() + 120
    while proc.poll() is None and not list(ckpts.glob("step_*")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = next(x for x in err.splitlines() if "Continue with: " in x).split("Continue with: ", 1)[1]
    argv = shlex.split(line)
    assert argv[:2] == ["electra-kit", "run"]
    cli(tmp_path, *argv[2:], cache=cache_dir)
    a = load_file(tmp_path / "straight" / "checkpoints" / "step_00000040" / "model.safetensors")
    b = load_file(tmp_path / "stopped" / "checkpoints" / "step_00000040" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_a_tracked_resume_names_no_config_and_tracks_into_the_runs_experiment(finished, tmp_path):
    """Issue 26.8: the "Continue with" line of a tracked run (``--run-dir D --resume``, no config files) crashed
    with IndexError: the experiment's default came from the config files given, now from those the run recorded."""
    run = copy_run(finished, tmp_path)
    proc = cli(tmp_path, "--run-dir", "r", "--resume", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
               "--gin", "train.steps = 11", cache=finished / "cache", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "mlflow_run.json").read_text())["experiment"] == "tiny"


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, small_corpus, cache_dir):
    """Issue 26.8: after a SIGKILL before the first checkpoint, ``--resume`` said there was nothing to resume and a
    new run into the directory said to use --resume. One rule now: the run holds its config, so --resume starts it
    again from step 0 with that config; a new run into its directory is still refused."""
    args = [*TINY, *corpus_gin(small_corpus), "--gin", "train.steps = 1000", "--gin",
            "train.checkpoint_every = 1000", "--gin", "train.log_every = 1", "--gin", "Electra.mask_prob = 0.2"]
    proc = subprocess.Popen(cli_argv("run", *args, "--run-dir", "r"), cwd=tmp_path,
                            env=cli_env(ELECTRA_KIT_CACHE=str(cache_dir)), stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while proc.poll() is None and not (tmp_path / "r" / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    assert not list((tmp_path / "r").glob("checkpoints/step_*"))
    again = cli(tmp_path, *args, "--run-dir", "r", cache=cache_dir, check=False)
    assert again.returncode == 2 and "--resume" in again.stderr, again.stderr[-2000:]
    resumed = cli(tmp_path, "--run-dir", "r", "--resume", "--no-tracking", "--gin", "train.steps = 3",
                  cache=cache_dir, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "starts again from step 0" in resumed.stderr
    assert "Electra.mask_prob = 0.2" in (tmp_path / "r" / "checkpoints" / "step_00000003" / "operative_config.gin").read_text()
