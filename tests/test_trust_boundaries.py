"""Trust boundaries. ``electra-kit sync`` treats a run directory as data: it reads only inside it (links
resolved), and delivers to the store named on its command line or in the environment, never to one (or to an
artifact root) the run directory's mlflow_run.json names. A gin ``include`` of something that is not a gin
file is refused naming the file, never showing a word of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from electra_kit.rundir.journal import JOURNAL
from electra_kit.tracking import STATE, TrackingError, sync_run

pytestmark = pytest.mark.usefixtures("no_env_uri")  # a test names its store

UID = "0123456789abcdef0123456789abcdef"


def run_dir(root: Path, experiment: str, **state) -> Path:
    """A run directory as a dead store's run leaves it (journal + mlflow_run.json), with ``state`` over it."""
    folder = root / "run"
    folder.mkdir()
    (folder / JOURNAL).write_text(json.dumps({"step": 1, "ts": 1, "train/loss": 2.0}) + "\n")
    (folder / "note.txt").write_text("inside")
    record = {"uid": UID, "experiment": experiment, "tracking_uri": "http://127.0.0.1:9", "params": {"a": "1"},
              "tags": {}, "artifacts": [{"path": str(folder / "note.txt"), "done": False}], "sent": 0,
              "status": "FINISHED", **state}
    (folder / STATE).write_text(json.dumps(record))
    return folder


def refused(folder: Path, store: str, experiment: str, match: str) -> str:
    with pytest.raises(TrackingError, match=match) as info:
        sync_run(folder, tracking_uri=store)
    assert "\n" not in str(info.value)
    assert MlflowClient(store).get_experiment_by_name(experiment) is None, "something was sent"
    return str(info.value)


def test_an_artifact_outside_the_run_directory_is_refused_before_anything_is_sent(store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    folder = run_dir(tmp_path, "out1", artifacts=[{"path": str(secret), "done": False}])
    message = refused(folder, store, "out1", "outside the run directory")
    assert str(secret) in message and "s3cr3t" not in message


def test_links_are_followed_as_an_upload_would(store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    folder = run_dir(tmp_path, "out2")
    (folder / "model").mkdir()
    (folder / "model" / "weights.bin").symlink_to(secret)
    (folder / STATE).write_text(json.dumps({**json.loads((folder / STATE).read_text()),
                                            "artifacts": [{"path": str(folder / "model"), "done": False}]}))
    assert "a link that leads outside" in refused(folder, store, "out2", str(folder / "model" / "weights.bin"))
    (folder / "model" / "weights.bin").unlink()
    (folder / JOURNAL).unlink()
    (folder / JOURNAL).symlink_to(secret)
    refused(folder, store, "out2", f"{folder / JOURNAL} is a link that leads outside")


@pytest.mark.parametrize("key, value", [("artifact_path", "../../elsewhere"), ("artifact_path", "/abs"),
                                        ("as_text", "../x.txt")])
def test_an_artifact_name_that_climbs_out_is_refused(store, tmp_path, key, value):
    folder = run_dir(tmp_path, "out3", artifacts=[{"path": "note.txt", key: value, "done": False}])
    refused(folder, store, "out3", f"{key} '{value}' is not a relative path")


def test_the_store_and_artifact_root_come_from_the_command_line_or_environment(store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    recorded = f"sqlite:///{tmp_path / 'recorded.db'}"
    folder = run_dir(tmp_path, "trust", tracking_uri=recorded, artifact_location=elsewhere.as_uri(),
                     artifacts=[{"path": "note.txt", "done": False}])  # relative: inside the run directory
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(TrackingError, match=f"recorded for the store {recorded}, not sqlite:///.*--tracking-uri"):
        sync_run(folder)  # no store named: the file's is not taken, nor ./mlflow.db made instead
    assert not (tmp_path / "recorded.db").exists() and not (tmp_path / "run" / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    counts = sync_run(folder)
    assert counts["tracking_uri"] == store and counts["metrics"] == 1 and counts["artifacts"] == 1
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("trust")
    assert not elsewhere.exists() and not (tmp_path / "recorded.db").exists()
    assert experiment.artifact_location.startswith(Path(store[len("sqlite:///"):]).parent.as_uri())
    assert [a.path for a in client.list_artifacts(counts["run_id"])] == ["note.txt"]


def test_the_cli_says_it_in_one_line(store, tmp_path, capsys):
    from electra_kit.cli import main

    folder = run_dir(tmp_path, "cli", artifacts=[{"path": os.devnull, "done": False}])
    assert main(["sync", str(folder), "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert err.startswith("electra-kit: error: ") and err.count("\n") == 1 and os.devnull in err


# ---- gin include ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include", ["secret.txt", "{tmp}/secret.txt", "sneaky.gin"])
def test_a_refused_include_names_the_file_never_its_content(tmp_path, cli_main, include):
    (tmp_path / "secret.txt").write_text("hunter2 = s3cr3t x\n")
    (tmp_path / "sneaky.gin").symlink_to(tmp_path / "secret.txt")  # a .gin name is not enough: links resolved
    include = include.format(tmp=tmp_path)
    (tmp_path / "a.gin").write_text(f"include '{include}'\n")
    for args in (["a.gin"], ["tiny.gin", "--gin", f"include '{include}'"]):
        out = cli_main("run", *args, "--no-tracking", "--run-dir", tmp_path / "r", cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert f"include '{include}' refused" in out.stderr
        assert "hunter2" not in out.stderr and "s3cr3t" not in out.stderr
        assert not (tmp_path / "r").exists()
