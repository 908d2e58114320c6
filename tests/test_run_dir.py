"""A run directory belongs to one run, and a finished model folder is replaced only by a complete one."""

import os
import subprocess
import sys
import time

import pytest
from conftest import corpus_gin, tiny_args
from safetensors.torch import load_file

from electra_kit.modelfolder import pretrained
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained
from electra_kit.objectives.electra import Electra
from electra_kit.registry import create_backbone
from electra_kit.rundir.directory import LOCK_FILE, RunDir, RunDirError, default_run_dir

TINY = tiny_args("train.steps = 2")


@pytest.fixture
def cli(cli_main):
    """``electra-kit run`` in this process (the refusals below need no interpreter of their own)."""
    return lambda tmp_path, corpus, *args: cli_main("run", *corpus_gin(corpus), *TINY, *args, cwd=tmp_path)


def tiny_electra(seed=0):
    import torch

    torch.manual_seed(seed)
    spec = dict(num_tokens=50, dim=16, depth=1, heads=1, max_seq_len=16)
    return Electra(create_backbone("transformer", **spec), create_backbone("transformer", **spec))


# ---- claiming and locking -----------------------------------------------------------------------


def test_a_new_run_into_a_directory_holding_a_run_is_refused_and_nothing_is_changed(tmp_path, small_corpus, cache_dir,
                                                                                      cli):
    run = tmp_path / "r"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("precious\n")
    proc = cli(tmp_path, small_corpus, "--run-dir", "r")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "already holds a run" in proc.stderr and "--resume" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == "precious\n"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.jsonl"]


def test_a_second_process_on_a_locked_run_dir_fails_at_once_naming_the_pid(tmp_path, small_corpus, cache_dir, cli):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from electra_kit.rundir.directory import RunDir; RunDir(sys.argv[1], resume=False);"
                               " print('locked', flush=True); time.sleep(60)", str(tmp_path / "r")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        proc = cli(tmp_path, small_corpus, "--run-dir", "r")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"in use by another electra-kit process (PID {holder.pid})" in proc.stderr
        assert time.monotonic() - start < 60
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / LOCK_FILE).write_text("999999\n")  # a PID that holds no lock (the kernel dropped it)
    owned = RunDir(tmp_path / "r", resume=True)
    assert "stale lock of PID 999999" in capsys.readouterr().err
    assert (tmp_path / "r" / LOCK_FILE).read_text().strip() == str(os.getpid())
    owned.release()
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_default_run_dirs_started_in_the_same_second_do_not_collide(tmp_path):
    names = {default_run_dir(["x/tiny.gin"], root=tmp_path / "runs") for _ in range(5)}
    assert len(names) == 5 and all(p.is_dir() and p.name.startswith("tiny-") for p in names)


def test_a_failed_start_removes_only_what_the_run_created(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    owned = RunDir(run, resume=False)
    (run / "operative_config.gin").write_text("made by the run")
    (run / "checkpoints").mkdir()
    owned.discard()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    fresh = RunDir(tmp_path / "new", resume=False)
    (fresh.path / "metrics.jsonl").write_text("")
    fresh.discard()
    assert not (tmp_path / "new").exists()


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        RunDir(tmp_path / "f", resume=False)


# ---- save_pretrained ----------------------------------------------------------------------------


def test_save_pretrained_keeps_the_old_model_folder_when_the_new_write_fails(tmp_path, monkeypatch):
    folder = save_pretrained(tiny_electra(0), tmp_path / "model")
    before = load_file(folder / "encoder.safetensors")
    calls = []

    def failing(module, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(module, path, *a, **k)

    real = pretrained.save_model
    monkeypatch.setattr(pretrained, "save_model", failing)
    with pytest.raises(OSError):
        save_pretrained(tiny_electra(1), folder)
    after = load_file(folder / "encoder.safetensors")
    assert all((before[k] == after[k]).all() for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    load_pretrained(folder)


def test_save_pretrained_never_touches_a_folder_that_happens_to_be_named_like_its_temporary(tmp_path):
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "mine.txt").write_text("keep")
    save_pretrained(tiny_electra(0), tmp_path / "model")
    save_pretrained(tiny_electra(1), tmp_path / "model")
    assert (tmp_path / "model.tmp" / "mine.txt").read_text() == "keep"
    load_pretrained(tmp_path / "model")


def test_a_lock_that_cannot_be_taken_is_one_line(tmp_path):
    (tmp_path / "r" / LOCK_FILE).mkdir(parents=True)  # a folder where the lock file goes
    with pytest.raises(RunDirError, match="cannot be locked"):
        RunDir(tmp_path / "r", resume=True)
    assert (tmp_path / "r" / LOCK_FILE).is_dir()


def test_without_an_atomic_exchange_a_swap_cut_between_its_renames_is_recovered(tmp_path, monkeypatch):
    from electra_kit.rundir import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # a filesystem without renameat2
    folder = save_pretrained(tiny_electra(0), tmp_path / "model")
    save_pretrained(tiny_electra(1), folder)
    load_pretrained(folder)
    # a writer killed after moving the old folder aside, before moving the new one in
    folder.rename(tmp_path / ".model.old-999999-abc")
    assert load_pretrained(folder) is not None and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
