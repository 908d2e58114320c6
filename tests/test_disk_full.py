"""A full disk, a file-size limit or a run directory made read-only mid-run: one line, exit 2 (or, for a periodic
checkpoint, the promised warning and training goes on), and nothing half-written left behind (issue 26.7).

The disk is "full" through RLIMIT_FSIZE in a child process: every write past the limit fails in the kernel (EFBIG),
whichever writer makes it (Python's, torch's, safetensors' or tokenizers' Rust code), which is what a full disk does
to them. Read-only is a monkeypatch of the file-opening calls for paths under the run directory: the tests run as
root, and root writes through chmod.
"""

import builtins
import errno
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import cli_argv, cli_env, corpus_gin, error_lines, tiny_args

from electra_kit.rundir import checkpoint as ckpt

TINY = tiny_args("train.log_every = 1")


def run_limited(tmp_path, corpus, cache, limit: int, *args) -> subprocess.CompletedProcess:
    """``electra-kit run`` in a child that may write no file larger than ``limit`` bytes."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(cli_argv("run", *TINY, *corpus_gin(corpus), "--run-dir", "r", *args), cwd=tmp_path,
                          env=cli_env(ELECTRA_KIT_CACHE=str(cache), PYTHONDONTWRITEBYTECODE="1"),  # no cut .pyc
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size)


def leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_checkpoints_the_disk_cannot_hold_warn_then_the_final_one_is_one_line(tmp_path, small_corpus, cache_dir):
    """model.safetensors (~590 kB) and state.pt (~1.2 MB) cannot be written; tokenizer and shards (< 100 kB) can.
    Before: safetensors' SafetensorError (and torch's RuntimeError) escaped the trainer's OSError handler."""
    proc = run_limited(tmp_path, small_corpus, cache_dir, 400_000, "--gin", "train.steps = 4",
                       "--gin", "train.checkpoint_every = 2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "checkpoint at step 2 could not be written" in proc.stderr and "training continues" in proc.stderr
    last = error_lines(proc.stderr).splitlines()[-1]
    assert last.startswith("electra-kit: error: checkpoint at step 4 could not be written") and "--resume" in last
    assert not list((tmp_path / "r" / "checkpoints").glob("step_*")) and not leftovers(tmp_path / "r")


@pytest.mark.parametrize("limit, culprit", [(20_000, "tokenizer.json"), (50_000, "tokens.bin")])
def test_a_cache_file_the_disk_cannot_hold_is_one_line(tmp_path, small_corpus, limit, culprit):
    """The vocabulary (~26 kB; tokenizers raised a bare Exception) and the token file (~76 kB) of a new cache."""
    cache = tmp_path / "cache"
    proc = run_limited(tmp_path, small_corpus, cache, limit)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc.stderr).splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("electra-kit: error: ") and culprit in lines[0] and "File too large" in lines[0]
    assert not leftovers(cache) and not (tmp_path / "r").exists()


def test_a_run_directory_made_read_only_mid_run_ends_in_one_line(tmp_path, small_corpus, cache_dir, cli_main,
                                                                 monkeypatch):
    from electra_kit.rundir.journal import Journal

    run_dir = str(tmp_path / "r")
    read_only = []
    real_open, real_os_open, real_mkdir, real_journal = builtins.open, os.open, os.mkdir, Journal.append

    def refuse(path, writing: bool) -> None:
        if read_only and writing and os.path.abspath(os.fspath(path)).startswith(run_dir):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    def opener(file, mode="r", *args, **kwargs):
        refuse(file, any(c in mode for c in "wax+"))
        return real_open(file, mode, *args, **kwargs)

    def os_opener(path, flags, *args, **kwargs):
        refuse(path, bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path, True)
        return real_mkdir(path, *args, **kwargs)

    def journal(self, step, values, **kwargs):
        if step == 4:  # the folder goes read-only after the checkpoint of step 2 and the log of step 3
            read_only.append(True)
        return real_journal(self, step, values, **kwargs)

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(os, "open", os_opener)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(Journal, "append", journal)
    proc = cli_main("run", *TINY, *corpus_gin(small_corpus), "--run-dir", "r", "--gin", "train.steps = 6",
                    "--gin", "train.checkpoint_every = 2", cwd=tmp_path)
    read_only.clear()
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = error_lines(proc.stderr).splitlines()[-1]
    assert last.startswith("electra-kit: error: r/metrics.jsonl: Read-only file system"), last
    assert ckpt.latest_valid_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000002"
    assert not leftovers(tmp_path / "r")


def test_a_writer_failing_in_rust_or_without_a_file_name_fails_as_an_os_error_naming_the_target(tmp_path):
    """safetensors and tokenizers raise their own exceptions for a full disk; Python's write names no file."""
    from electra_kit.rundir.atomic import atomic_write, staged_dir

    def full(_tmp):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "a.json", writer=full)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "a.json")
    with pytest.raises(OSError) as caught, staged_dir(tmp_path / "folder"):
        raise OSError(errno.EFBIG, "File too large")
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(tmp_path / "folder")
    with pytest.raises(ValueError), staged_dir(tmp_path / "folder"):  # not a failure of the OS: as it was
        raise ValueError("a bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("failing", [1, 99])
def test_safetensors_own_error_for_a_full_disk_is_the_promised_warning_or_a_final_error(tmp_path, monkeypatch,
                                                                                        failing):
    """The issue's SafetensorError, raised by the writer the checkpoint uses (pretraining and fine-tuning alike):
    the first ``failing`` writes fail; a periodic one warns and training goes on, the run's last one is an error."""
    from safetensors import SafetensorError
    from test_training import CPU, classifier, labeled

    from electra_kit.training.settings import TrainConfig
    from electra_kit.training.trainer import Trainer

    real, calls = ckpt.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failing:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    cfg = TrainConfig(steps=4, batch_size=8, progress=False, checkpoint_every=2, precision="fp32", compile=False)
    trainer = Trainer(classifier(), cfg, train_batches=labeled(8), eval_batches=None, run_dir=tmp_path, device=CPU)
    with pytest.warns(RuntimeWarning, match="checkpoint at step 2 could not be written .*No space left on device"):
        if failing > 1:
            with pytest.raises(ckpt.CheckpointError, match="checkpoint at step 4 could not be written"):
                trainer.fit()
        else:
            assert trainer.fit()["checkpoint"].name == "step_00000004"
    assert trainer.step == 4 and not leftovers(tmp_path)
