"""electra_kit.tracking against real MLflow stores: SQLite files and a real ``mlflow server``."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow_server import MlflowServer, free_port

from electra_kit.tracking import (
    OUTBOX_DIR,
    RUN_FILE,
    Tracker,
    flatten_gin_config,
    format_runs_table,
    list_runs,
    resolve_tracking_uri,
    sync_outbox,
    system_tags,
    ui_command,
)

HAS_PSUTIL = importlib.util.find_spec("psutil") is not None  # system metrics need it
FAST = dict(flush_interval=0.1, system_metrics=False)


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


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
        {"generator.backbone": "reformer", "discriminator.backbone": "performer", "long": "x" * 7000}
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
        flush_interval=0.1,
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
    info = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert info["run_id"] == run_id
    assert not (tmp_path / "run" / OUTBOX_DIR).exists()  # nothing was buffered, nothing left behind
    assert caplog.text.count("refused") == 1  # the bad name once, not once per step

    rows = list_runs(store, "round-trip")
    assert rows[0]["run_id"] == run_id and rows[0]["generator"] == "reformer" and rows[0]["step"] == 19
    assert "reformer" in format_runs_table(rows)


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
    assert "refused" in caplog.text


def test_rank1_and_disabled_write_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for tr in (
        Tracker(run_dir=tmp_path / "r1", tracking_uri=uri, rank=1),
        Tracker(run_dir=tmp_path / "r2", tracking_uri=uri, enabled=False),
    ):
        assert tr.start(params={"a": 1}, tags={"b": "c"}) is None
        tr.log_metrics({"train/loss": 1.0}, 0)
        tr.log_artifact(__file__)
        tr.set_tags({"x": "y"})
        tr.finish()
        assert tr.run_id is None
    assert list(tmp_path.iterdir()) == []


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
    assert "failed" in text and "reachable again" in text
    assert not (tmp_path / OUTBOX_DIR).exists()


def test_server_down_at_start_run_created_on_recovery(server, tmp_path):
    server.stop()
    tr = Tracker(
        run_dir=tmp_path,
        tracking_uri=server.uri,
        experiment="late",
        run_name="late",
        flush_interval=0.1,
        system_metrics_interval=0.1,
    )
    assert tr.start(params={"a": 1}, tags={"t": "1"}) is None
    for step in range(10):
        tr.log_metrics({"train/loss": float(step)}, step)
    assert any((tmp_path / OUTBOX_DIR).glob("*.jsonl"))  # buffered on disk, not only in memory
    server.start()
    tr.finish()
    assert tr.run_id
    client = MlflowClient(server.uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "late" and run.data.params["a"] == "1"
    assert steps_of(client, tr.run_id, "train/loss") == list(range(10))
    if HAS_PSUTIL:  # sampled while the server was down, delivered from the outbox
        assert any(k.startswith("system/") for k in run.data.metrics)
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == tr.run_id


def test_sync_outbox_delivers_later(store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    tr = Tracker(run_dir=tmp_path, tracking_uri=dead, experiment="synced", drain_timeout=0.5, **FAST)
    assert tr.start(params={"a": 1}, tags={}) is None
    for step in range(30):
        tr.log_metrics({"train/loss": float(step)}, step)
    (tmp_path / "note.txt").write_text("hello")
    tr.log_artifact(tmp_path / "note.txt")
    tr.finish("FAILED", error="boom")
    assert tr.run_id is None and any((tmp_path / OUTBOX_DIR).glob("*.jsonl"))

    journal = next((tmp_path / OUTBOX_DIR).glob("*.jsonl"))
    saved = journal.read_text()
    counts = sync_outbox(tmp_path, tracking_uri=store)
    assert counts["remaining"] == 0 and counts["delivered"] >= 33 and counts["outboxes"] == 1
    run_id = json.loads((tmp_path / RUN_FILE).read_text())["run_id"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["electra_kit.error"] == "boom"
    assert steps_of(client, run_id, "train/loss") == list(range(30))
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    assert sync_outbox(tmp_path, tracking_uri=store)["delivered"] == 0  # nothing twice
    # The acknowledgements lost (a crash right after delivery): the replay creates no second run
    # (found by its uid tag) and no second metric (MLflow's SQL store de-duplicates identical ones).
    journal.parent.mkdir(exist_ok=True)
    journal.write_text(saved)
    assert sync_outbox(tmp_path, tracking_uri=store)["remaining"] == 0
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert steps_of(client, run_id, "train/loss") == list(range(30))


GIN_OPERATIVE = """\
import electra_kit.trainer
import gin.torch.external_configurables

# Macros:
# ==============================================================================
HIDDEN = 256
generator/DEPTH = 4

# Parameters for discriminator/backbone:
# ==============================================================================
discriminator/backbone.dim = %HIDDEN
discriminator/backbone.name = 'performer'

# Parameters for Electra:
# ==============================================================================
Electra.discriminator = @discriminator/backbone()
Electra.generator = @generator/backbone()
Electra.mask_prob = 0.15  # a comment

# Parameters for train:
# ==============================================================================
train.lr = 0.0005
train.schedule = \\
    {'extra': [1,
               2,
               3],
     'kind': 'linear',
     'warmup': 100}
train.optimizer = @torch.optim.AdamW
train.steps = 2000
"""


def test_flatten_gin_config():
    flat = flatten_gin_config(GIN_OPERATIVE)
    assert flat["HIDDEN"] == "256" and flat["generator/DEPTH"] == "4"
    assert flat["discriminator/backbone.dim"] == "%HIDDEN"
    assert flat["discriminator/backbone.name"] == "'performer'"
    assert flat["Electra.generator"] == "@generator/backbone()"
    assert flat["Electra.mask_prob"] == "0.15"
    assert flat["train.schedule"] == "{'extra': [1, 2, 3], 'kind': 'linear', 'warmup': 100}"
    assert flat["train.optimizer"] == "@torch.optim.AdamW" and flat["train.steps"] == "2000"
    assert not any("import" in k for k in flat)
    # text gin's parser refuses still gives the bindings it can read
    broken = flatten_gin_config("a.b = 1\nc/d.e = $oops(\n  1)\n")
    assert broken["a.b"] == "1" and "c/d.e" in broken


def test_helpers_outside_git(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"
    tags = system_tags()
    assert tags["electra_kit.device"] in ("cpu", "cuda") and "mlflow.source.git.commit" not in tags
    argv = ui_command(port=5123)
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert argv[argv.index("--default-artifact-root") + 1] == str(tmp_path / "mlruns")
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in argv and "5123" in argv
    assert list_runs() == [] and not (tmp_path / "mlflow.db").exists()
