"""electra_kit.tracking against real MLflow stores: SQLite files, a real ``mlflow server``, and stores that
are down, hang or are refused."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow_server import MlflowServer, free_port

from electra_kit.rundir.directory import RunDir
from electra_kit.rundir.journal import JOURNAL, Journal, read_journal
from electra_kit.tracking import (
    STATE,
    Tracker,
    TrackingError,
    format_runs_table,
    list_runs,
    resolve_tracking_uri,
    sync_run,
    system_tags,
    ui_command,
)

pytestmark = pytest.mark.usefixtures("no_env_uri")  # a test names its store

HAS_PSUTIL = importlib.util.find_spec("psutil") is not None  # system metrics need it
FAST = dict(system_metrics=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.stop()


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_run_round_trip(store, tmp_path, caplog):
    params = {f"p{i}": i for i in range(150)}  # more than one log_batch of params
    params.update(
        {"generator.backbone": "reformer", "discriminator.backbone": "performer", "long": "x" * 7000, "bad@param": 1}
    )
    (tmp_path / "config.gin").write_text("train.steps = 3\n")
    folder = tmp_path / "tokenizer"
    (folder / "sub").mkdir(parents=True)
    (folder / "vocab.json").write_text("{}")
    (folder / "sub" / "merges.txt").write_text("a b")

    tr = Tracker(
        run_dir=tmp_path / "run",
        tracking_uri=store,
        experiment="round-trip",
        run_name="rt",
        system_metrics_interval=0.2,
    )
    run_id = tr.start(params=params, tags={"purpose": "test"})
    assert run_id and tr.run_id == run_id
    for step in range(20):
        metrics = {"train/loss": torch.tensor(10.0 - step), "train/lr": 1e-3, "train/tokens_per_s": 5e4}
        tr.log_metrics({**metrics, "eval/acc@1": 0.5}, step)  # a name MLflow refuses: dropped alone
    tr.log_artifact(tmp_path / "config.gin")
    tr.log_artifact(folder, "assets")
    tr.set_tags({"phase": "done"})
    time.sleep(0.5)  # a few system-metric samples
    tr.finish()

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "rt"
    p = run.data.params
    assert p["p149"] == "149" and p["generator.backbone"] == "reformer"
    assert len(p["long"]) == 6000 and p["long"].endswith("[truncated]")
    assert steps_of(client, run_id, "train/loss") == list(range(20))
    assert run.data.metrics["train/loss"] == pytest.approx(-9.0) and "eval/acc@1" not in run.data.metrics
    if HAS_PSUTIL:
        assert any(k.startswith("system/cpu") for k in run.data.metrics)
    tags = run.data.tags
    assert tags["purpose"] == "test" and tags["phase"] == "done"
    assert tags["electra_kit.torch_version"] == torch.__version__ and "electra_kit.hostname" in tags
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.gin", "assets"}
    assert {a.path for a in client.list_artifacts(run_id, "assets/tokenizer/sub")} == {
        "assets/tokenizer/sub/merges.txt"
    }
    assert run.info.artifact_uri.startswith(
        Path(store[len("sqlite:///") :]).parent.joinpath("mlruns").as_uri()
    )
    info = json.loads((tmp_path / "run" / STATE).read_text())
    assert info["run_id"] == run_id and info["status"] == "FINISHED" and all(a["done"] for a in info["artifacts"])
    journal = [json.loads(line) for line in (tmp_path / "run" / JOURNAL).read_text().splitlines()]
    assert [r["step"] for r in journal if "train/loss" in r] == list(range(20)) and all("ts" in r for r in journal)
    assert caplog.text.count("refuses the metric name") == 1  # the bad name once, not once per step
    assert "refuses the param name 'bad@param'" in caplog.text and "bad@param" not in p  # the rest arrived

    runs = list_runs(store, "round-trip")
    assert runs["run_id"][0] == run_id and runs["params.generator.backbone"][0] == "reformer"
    header, row = format_runs_table(runs).splitlines()
    assert header.split() == ["name", "run", "id", "status", "generator", "discriminator", "steps", "loss", "gen",
                              "loss", "disc", "loss", "tok/s", "started"]
    assert row.split()[:5] == ["rt", run_id, "FINISHED", "reformer", "performer"] and row.split()[6] == "-9"


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_failed_and_killed(store, tmp_path, status):
    tr = Tracker(run_dir=tmp_path, tracking_uri=store, experiment="status", **FAST)
    run_id = tr.start(params={}, tags={})
    tr.log_metrics({"train/loss": 1.0}, 0)
    tr.finish(status, error="Traceback ...\nRuntimeError: CUDA out of memory" if status == "FAILED" else None)
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == status
    if status == "FAILED":
        assert run.data.tags["electra_kit.error"].endswith("CUDA out of memory")


def test_resume_appends_to_same_run(store, tmp_path, caplog):
    tr = Tracker(run_dir=tmp_path, tracking_uri=store, experiment="resume", **FAST)
    run_id = tr.start(params={"train.steps": 10}, tags={})
    for step in range(5):
        tr.log_metrics({"train/loss": float(step)}, step)
    tr.finish("KILLED")

    tr2 = Tracker(run_dir=tmp_path, tracking_uri=store, experiment="resume", **FAST)
    # a changed param is refused by MLflow: dropped with a warning, the rest still arrives
    assert tr2.start(params={"train.steps": 20, "train.new": 1}, tags={}, resume=True) == run_id
    assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"
    for step in range(5, 10):
        tr2.log_metrics({"train/loss": float(step)}, step)
    tr2.finish()
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert steps_of(client, run_id, "train/loss") == list(range(10))
    params = client.get_run(run_id).data.params
    assert params["train.steps"] == "10" and params["train.new"] == "1"
    assert "refuses to change a logged param; the run keeps train.steps=10 (now 20)" in caplog.text


def test_a_run_resumed_against_another_store_sends_it_everything(store, tmp_path):
    tr = Tracker(run_dir=tmp_path, tracking_uri=store, experiment="moved", **FAST)
    first = tr.start(params={"a": 1}, tags={})
    for step in range(3):
        tr.log_metrics({"train/loss": float(step)}, step)
    tr.finish("KILLED")
    other = f"sqlite:///{tmp_path.parent / (tmp_path.name + '_other.db')}"
    tr2 = Tracker(run_dir=tmp_path, tracking_uri=other, experiment="moved", **FAST)
    second = tr2.start(params={"a": 1}, tags={}, resume=True)
    tr2.log_metrics({"train/loss": 3.0}, 3)
    tr2.finish()
    assert second and second != first  # the old run id means nothing there
    assert steps_of(MlflowClient(other), second, "train/loss") == [0, 1, 2, 3]  # the journal from byte 0


def test_tracker_is_a_sink_of_the_run_journal(tmp_path):
    """What the run journals by itself (the trainer's path) reaches MLflow through the Tracker; a journal of another
    folder is refused (one journal object per file and process)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = Journal(tmp_path / "run" / JOURNAL)
    (tmp_path / "run").mkdir()
    tr = Tracker(run_dir=tmp_path / "run", tracking_uri=uri, experiment="sink", journal=journal, **FAST)
    run_id = tr.start(params={}, tags={})
    for step in (1, 2):
        journal.append(step, {"train/loss": 1.0 / step})
    tr.finish()
    assert steps_of(MlflowClient(uri), run_id, "train/loss") == [1, 2]
    with pytest.raises(ValueError, match="is not"):
        Tracker(run_dir=tmp_path / "other", tracking_uri=uri, journal=journal)


def test_a_resumed_process_journals_each_logged_step_once(tmp_path):
    """A process killed after logging steps 2-3 past its checkpoint at step 1; the resumed one redoes them. Its
    ``once`` appends leave out what the killed one journaled (the first value stands), not new keys, new steps or
    system samples."""
    path = tmp_path / JOURNAL
    killed = Journal(path)
    for step in (1, 2, 3):
        killed.append(step, {"train/loss": float(step)}, once=True)
    killed.append(3, {"system/cpu": 10.0})
    resumed = Journal(path)
    for step in (2, 3, 4):
        resumed.append(step, {"train/loss": 10.0 * step, "train/grad_norm": 1.0}, once=True)
    resumed.append(2, {"system/cpu": 11.0})
    assert resumed.append(3, {"train/loss": 0.0}, once=True) == path.stat().st_size  # nothing left: nothing written
    records = read_journal(path)
    assert [(r["step"], r["train/loss"]) for r in records if "train/loss" in r] == [(1, 1.0), (2, 2.0), (3, 3.0),
                                                                                    (4, 40.0)]
    assert [r["step"] for r in records if "train/grad_norm" in r] == [2, 3, 4]
    assert [r["system/cpu"] for r in records if "system/cpu" in r] == [10.0, 11.0]


def test_server_killed_mid_run(server, tmp_path, caplog):
    server.start()
    caplog.set_level(logging.WARNING, logger="electra_kit.tracking")
    tr = Tracker(run_dir=tmp_path, tracking_uri=server.uri, experiment="outage", **FAST)
    run_id = tr.start(params={"generator.backbone": "reformer"}, tags={})
    assert run_id
    n, slowest = 240, 0.0
    for step in range(n):
        if step == 60:
            server.kill()
        if step == 180:
            server.start()  # same port, same store
        t0 = time.perf_counter()
        tr.log_metrics({"train/loss": torch.tensor(float(step)), "train/gen_loss": step / 2}, step)
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.01)
    tr.finish()
    assert slowest < 0.05, f"log_metrics blocked for {slowest:.3f}s"
    client = MlflowClient(server.uri)
    assert steps_of(client, run_id, "train/loss") == list(range(n))  # every step, exactly once
    assert steps_of(client, run_id, "train/gen_loss") == list(range(n))
    assert client.get_run(run_id).info.status == "FINISHED"
    text = caplog.text
    assert "failed" in text and "reachable again" in text and "did not confirm" not in text


def test_server_down_at_start_run_created_on_recovery(server, tmp_path):
    server.stop()
    tr = Tracker(
        run_dir=tmp_path,
        tracking_uri=server.uri,
        experiment="late",
        run_name="late",
        system_metrics_interval=0.1,
    )
    assert tr.start(params={"a": 1}, tags={"t": "1"}) is None
    for step in range(10):
        tr.log_metrics({"train/loss": float(step)}, step)
    lines = (tmp_path / JOURNAL).read_text().splitlines()  # on disk, not only in memory
    assert [json.loads(line)["step"] for line in lines if "train/loss" in line] == list(range(10))
    server.start()
    tr.finish()
    assert tr.run_id
    client = MlflowClient(server.uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "late" and run.data.params["a"] == "1"
    assert steps_of(client, tr.run_id, "train/loss") == list(range(10))
    if HAS_PSUTIL:  # sampled while the server was down, delivered from the journal
        assert any(k.startswith("system/") for k in run.data.metrics)
    assert json.loads((tmp_path / STATE).read_text())["run_id"] == tr.run_id


def test_sync_refuses_a_live_runs_directory_then_delivers_what_a_dead_store_missed_exactly_once(store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    tr = Tracker(run_dir=tmp_path, tracking_uri=dead, experiment="synced", drain_timeout=0.5, **FAST)
    assert tr.start(params={"a": 1}, tags={}) is None
    for step in range(30):
        tr.log_metrics({"train/loss": float(step)}, step)
    (tmp_path / "note.txt").write_text("hello")
    tr.log_artifact(tmp_path / "note.txt")
    tr.finish("FAILED", error="boom")
    assert tr.run_id is None

    live = RunDir(tmp_path, resume=True)  # a run still holds its directory: it delivers its own records
    with pytest.raises(TrackingError, match=f"in use by another electra-kit process \\(PID {os.getpid()}\\)"):
        sync_run(tmp_path, tracking_uri=store)
    live.release()
    saved = (tmp_path / STATE).read_text()
    counts = sync_run(tmp_path, tracking_uri=store)
    assert counts["metrics"] == 30 and counts["params"] == 1 and counts["artifacts"] == 1
    run_id = json.loads((tmp_path / STATE).read_text())["run_id"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["electra_kit.error"] == "boom"
    assert steps_of(client, run_id, "train/loss") == list(range(30))
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    assert sync_run(tmp_path, tracking_uri=store)["metrics"] == 0  # nothing twice
    # The state file as it was before the first sync (a crash right after delivery): the replay creates no
    # second run (found by its uid tag) and no second metric (MLflow's SQL store keeps a metric it holds once).
    (tmp_path / STATE).write_text(saved.replace(dead, store))
    assert sync_run(tmp_path, tracking_uri=store)["metrics"] == 30  # sent again
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert steps_of(client, run_id, "train/loss") == list(range(30))
    # Another store has none of it: everything goes there, artifacts too.
    other = f"sqlite:///{tmp_path.parent / (tmp_path.name + '_other.db')}"
    counts = sync_run(tmp_path, tracking_uri=other)
    assert counts["metrics"] == 30 and counts["artifacts"] == 1 and counts["run_id"] != run_id
    assert steps_of(MlflowClient(other), counts["run_id"], "train/loss") == list(range(30))


def test_a_hanging_store_leaves_every_record_on_disk_for_sync(store, tmp_path, monkeypatch, caplog):
    """A server that accepts connections and never answers: finish() gives up after drain_timeout, says so,
    and everything the run logged is in the run directory, which ``sync`` then delivers."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections queue up, nothing ever reads them
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        tr = Tracker(run_dir=tmp_path, tracking_uri=uri, experiment="hang", drain_timeout=1, start_timeout=1, **FAST)
        t0 = time.monotonic()
        assert tr.start(params={"a": 1}, tags={}) is None
        for step in range(25):
            tr.log_metrics({"train/loss": float(step)}, step)
        tr.finish("FINISHED")
        assert time.monotonic() - t0 < 10
        tr._thread.join(10)
    assert "did not confirm" in caplog.text and f"electra-kit sync {tmp_path}" in caplog.text
    assert json.loads((tmp_path / STATE).read_text())["status"] == "FINISHED"
    assert sync_run(tmp_path, tracking_uri=store)["metrics"] == 25
    run_id = json.loads((tmp_path / STATE).read_text())["run_id"]
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED" and client.get_run(run_id).data.params["a"] == "1"
    assert steps_of(client, run_id, "train/loss") == list(range(25))


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("foo://bar", "MLflow has no store for 'foo:'"),
        ("file:///tmp/electra-kit-test-mlruns", "maintenance mode"),
        ("garbage", "maintenance mode.*give sqlite:///PATH.db"),  # a bare word is a local folder to MLflow
        ("sqlite:////proc/electra-kit-test.db", "cannot create /proc/electra-kit-test.db"),
        ("sqlite:////proc/electra-kit-test/sub/x.db", "cannot create"),
    ],
)
def test_a_store_mlflow_refuses_fails_at_construction(tmp_path, monkeypatch, uri, reason):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingError, match=reason) as err:
        Tracker(run_dir=tmp_path, tracking_uri=uri)
    assert "\n" not in str(err.value) and uri in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_store_that_cannot_be_written_is_refused_at_construction(tmp_path):
    """A read-only store (here an immutable file, which even root cannot write) is refused at once, not retried
    with an MLflow traceback every second."""
    import sqlite3
    import subprocess

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        with pytest.raises(TrackingError, match=f"cannot write {db}"):
            Tracker(run_dir=tmp_path / "r", tracking_uri=f"sqlite:///{db}")
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_a_system_metrics_interval_that_would_spin_is_refused(tmp_path, monkeypatch, value):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", value)
    with pytest.raises(TrackingError, match=f"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL='{value}'"):
        Tracker(run_dir=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_ui_on_a_taken_or_impossible_port_says_so(tmp_path, capsys):
    from electra_kit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"electra-kit: --port {port}: 127.0.0.1:{port} is in use (Address already in "
                                       "use); choose another --port\n")
    with pytest.raises(SystemExit) as exited:
        main(["ui", "--port", "99999"])
    assert exited.value.code == 2 and "must be a TCP port 1-65535" in capsys.readouterr().err


def test_a_refused_store_stops_the_run_before_anything_is_built(tmp_path, capsys):
    from electra_kit.cli import main

    run_dir = tmp_path / "r"
    assert main(["run", "tiny.gin", "--tracking-uri", "foo://bar", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("electra-kit: error: tracking URI foo://bar: MLflow has no store") and err.count("\n") == 1
    assert not run_dir.exists()


def test_runs_and_sync_say_what_is_wrong_in_one_line(tmp_path, capsys):
    from electra_kit.cli import main

    assert main(["runs", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("electra-kit: error: cannot read runs from http://127.0.0.1:") and err.count("\n") == 1
    assert main(["sync", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"electra-kit: error: {tmp_path / 'missing'}: no such run directory\n"
    assert main(["sync", str(tmp_path)]) == 2
    assert "not a tracked run directory" in capsys.readouterr().err


def test_helpers_default_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"
    tags = system_tags()
    assert tags["electra_kit.device"] in ("cpu", "cuda") and tags["electra_kit.torch_version"] == torch.__version__
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(tags)  # MLflow's own source tags
    argv = ui_command(port=5123)
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert argv[argv.index("--default-artifact-root") + 1] == str(tmp_path / "mlruns")
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in argv and "5123" in argv
    assert list_runs().empty and not (tmp_path / "mlflow.db").exists()
    assert format_runs_table(list_runs()) == "no runs"
