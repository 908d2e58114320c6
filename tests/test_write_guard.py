"""One rule for every command that writes (rundir/guard.py): never an input, a special file, or a folder
electra-kit did not make (or made for something else); a run directory holds one run, even a killed one.
Each refusal is one line naming the path, exit 2, and nothing changed."""

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import error_lines
from test_run_dir import tiny_electra

from electra_kit.cli import main
from electra_kit.data.tokenizer import train_wordpiece
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained
from electra_kit.rundir.directory import LOCK_FILE, RunDir, RunDirError
from electra_kit.rundir.guard import MARKER, OutputError, check_output, made_as


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model(tmp_path):
    tok = train_wordpiece(["the nation and the people of the union"] * 20, vocab_size=50)
    return save_pretrained(tiny_electra(), tmp_path / "runA" / "model", tokenizer=tok,
                           special_ids={"pad": 0, "mask": 2})


def export(model, out, *flags):
    return main(["export", str(model), "--format", "portable", str(out), *flags])


# ---- export ---------------------------------------------------------------------------------------------------------


def test_export_overwrite_never_replaces_a_users_folder_that_holds_a_config_json(tmp_path, model, capsys):
    mine = tmp_path / "project"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "main.py").write_text("print('years of work')")
    (mine / "config.json").write_text("{}")
    before = snapshot(mine)
    assert export(model, mine, "--overwrite") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and str(mine) in err and "did not make" in err
    assert snapshot(mine) == before


def test_export_overwrite_never_replaces_another_runs_model_folder(tmp_path, model, capsys):
    other = save_pretrained(tiny_electra(1), tmp_path / "runB" / "model")
    before = snapshot(other)
    assert export(model, other, "--overwrite") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and str(other) in err and "model folder" in err
    assert snapshot(other) == before
    load_pretrained(other)


def test_export_overwrite_replaces_an_earlier_export_and_nothing_inside_a_run_directory(tmp_path, model, capsys):
    out = tmp_path / "exported"
    assert export(model, out) == 0 and made_as(out) == "export"
    assert export(model, out) == 2 and "--overwrite" in capsys.readouterr().err
    assert export(model, out, "--overwrite") == 0
    load_pretrained(out)
    run = RunDir(tmp_path / "runC", resume=False)  # a run directory belongs to its run
    run.release()
    assert export(model, tmp_path / "runC" / "exported") == 2
    assert "made for something else" in capsys.readouterr().err
    assert not (tmp_path / "runC" / "exported").exists()


# ---- predict --------------------------------------------------------------------------------------------------------


def predict(model, tmp_path, output):
    (tmp_path / "in.jsonl").write_text('{"text": "the nation"}\n')
    return main(["predict", str(model), "--input", str(tmp_path / "in.jsonl"), "--output", str(output)])


def test_predict_never_replaces_a_fifo_a_socket_or_a_device(tmp_path, model, capsys):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.jsonl"))
    device = tmp_path / "zero.jsonl"
    device.symlink_to("/dev/zero")  # were it replaced, the link would go, never the system's device
    try:
        for path, what in ((fifo, "FIFO"), (tmp_path / "sock.jsonl", "socket"), (device, "device")):
            assert predict(model, tmp_path, path) == 2
            err = error_lines(capsys.readouterr().err)
            assert len(err.splitlines()) == 1 and str(path) in err and what in err
        assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISSOCK(os.stat(tmp_path / "sock.jsonl").st_mode)
        assert device.is_symlink() and stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    finally:
        sock.close()
    with pytest.raises(OutputError, match="device"):
        check_output(os.devnull, inputs=[tmp_path / "in.jsonl"])


def test_predict_to_dev_null_writes_nothing_and_replaces_nothing(tmp_path):
    from test_tabular_input import Echo

    from electra_kit.finetune.predict import predict_file

    (tmp_path / "in.jsonl").write_text('{"text": "the nation", "label": "a"}\n')
    null = tmp_path / "null.jsonl"
    null.symlink_to(os.devnull)  # were it replaced, the link would go, never the system's /dev/null
    assert predict_file(Echo(), tmp_path / "in.jsonl", null).accuracy == 1.0
    assert null.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "null.jsonl"]


def test_predict_never_writes_into_the_model_it_reads(tmp_path, model, capsys):
    before = snapshot(model)
    for output in (model / "config.json", model / "new.jsonl", model.parent, tmp_path / "in.jsonl"):
        assert predict(model, tmp_path, output) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err.splitlines()) == 1 and str(output) in err
    assert snapshot(model) == before
    load_pretrained(model)
    assert predict(model, tmp_path, tmp_path / "in.jsonl" / "out.jsonl") == 2  # under a file: one line, no traceback
    assert "which is a file" in error_lines(capsys.readouterr().err)
    (tmp_path / "hard.jsonl").hardlink_to(tmp_path / "in.jsonl")
    with pytest.raises(OutputError, match="is an input"):
        check_output(tmp_path / "hard.jsonl", inputs=[tmp_path / "in.jsonl"])


# ---- run directories ------------------------------------------------------------------------------------------------

KILLED = """
import os, signal, sys
from electra_kit.rundir.directory import RunDir
RunDir(sys.argv[1], resume=False)
os.makedirs(os.path.join(sys.argv[1], "seed_0", "checkpoints"))
open(os.path.join(sys.argv[1], "seed_0", "metrics.jsonl"), "w").write('{"step": 1}\\n')
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_finetune_run_dir_left_by_a_killed_run_is_refused(tmp_path, model, capsys):
    run = tmp_path / "ft"
    proc = subprocess.run([sys.executable, "-c", KILLED, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    before = snapshot(run)
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"the nation {i},{i % 2}\n" for i in range(8)))
    code = main(["finetune", "--model", str(model), "--train", str(train), "--eval", str(train), "--no-tracking",
                 "--no-progress", "--run-dir", str(run)])
    assert code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "continue it with --resume" in err
    before.pop(Path(LOCK_FILE))  # the killed run's stale lock goes with the refused run's; nothing else changed
    assert snapshot(run) == before


def test_a_run_dir_made_before_the_marker_holding_a_finetune_run_is_refused(tmp_path):
    (tmp_path / "ft" / "seed_0").mkdir(parents=True)
    with pytest.raises(RunDirError, match="seed_0"):
        RunDir(tmp_path / "ft", resume=False)


def test_a_run_dir_never_holds_or_sits_in_an_input(tmp_path, model):
    for path in (model, model / "sub", model.parent):  # the model folder; its run directory writes model/
        with pytest.raises(RunDirError, match="--run-dir"):
            RunDir(path, resume=False, inputs=[model])
    assert not (model / "sub").exists() and not (model.parent / MARKER).exists()
    owned = RunDir(tmp_path / "fresh", resume=False, inputs=[model])
    assert made_as(owned.path) == "run"
    owned.discard()
    assert not (tmp_path / "fresh").exists()

