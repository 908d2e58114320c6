"""A real training run recorded in MLflow: a SQLite store, resume into the same run, a server that dies mid-run."""

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import cli_argv, cli_env, corpus_gin, run_cli, tiny_args
from mlflow import MlflowClient
from mlflow_server import MlflowServer

from electra_kit.rundir.journal import JOURNAL, read_journal

TINY = tiny_args(tracking=True)


def run_argv(corpus: Path, *args: str) -> list[str]:
    return cli_argv("run", *corpus_gin(corpus), *args)


def only_run(client: MlflowClient):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def steps_of(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_run_lands_in_the_default_sqlite_store(tmp_path, small_corpus, cache_dir, cli_main):
    run_cli("run", *corpus_gin(small_corpus), *TINY, "--run-dir", "run", cwd=tmp_path)
    assert (tmp_path / "mlflow.db").is_file(), "the default store is ./mlflow.db"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    params = run.data.params
    assert params["train.steps"] == "30" or params.get("TRAIN_STEPS") == "30"
    assert params["discriminator/backbone.dim"] == "64" and params["generator/backbone.name"] == "'transformer'"
    assert params["discriminator.backbone"] == "transformer" and int(params["generator.params"]) > 0
    assert params["train.effective_warmup_steps"] == "3"  # train.warmup_steps capped at 10% of 30 steps
    import torch

    from electra_kit.training.settings import native_bf16

    # what 'auto' chose, as the trainer applied it: bf16 where this CPU does it natively; no compile for 30 steps
    assert params["train.effective_precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert params["train.effective_compile"] == "False"
    assert not any(v.startswith("%") for v in params.values()), "macros are resolved"
    for key in ("train/loss", "train/gen_loss", "train/disc_loss", "train/gen_acc", "train/disc_acc",
                "train/lr", "train/grad_norm", "train/tokens_per_s"):
        assert steps_of(client, run.info.run_id, key) == [5, 10, 15, 20, 25, 30], key
    assert steps_of(client, run.info.run_id, "eval/disc_auc") == [15, 30]
    tags = run.data.tags
    assert tags["objective"] == "Electra" and "torch" in " ".join(tags)
    files = artifact_paths(client, run.info.run_id)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    for name in ("operative_config.gin", "operative_config.gin.txt", "model/encoder.safetensors", "model/tokenizer.json", "model/config.json"):
        assert name in files, files
    # artifacts stay beside the store, not scattered into other folders
    assert any(p.name == "encoder.safetensors" for p in (tmp_path / "mlruns").rglob("*"))
    # `electra-kit runs` reads the same default store: one row, this run, its backbones and final step
    table = cli_main("runs", cwd=tmp_path, check=True).stdout.splitlines()
    assert len(table) == 2 and table[1].split()[:5] == ["run", run.info.run_id, "FINISHED", "transformer", "transformer"]
    assert table[1].split()[5] == "30"


def journaled_steps(run_dir: Path, key: str) -> list[int]:
    return [r["step"] for r in read_journal(run_dir / JOURNAL) if key in r] if (run_dir / JOURNAL).exists() else []


def test_resume_continues_the_same_mlflow_run_with_one_value_per_step(tmp_path, small_corpus, cache_dir):
    """Killed with steps logged past its last checkpoint, the run redoes them when resumed: the journal and MLflow
    still hold each step once (before, the redone steps were journaled and sent a second time)."""
    args = [*TINY, "--gin", "train.steps = 40", "--gin", "train.checkpoint_every = 20", "--gin", "train.log_every = 1",
            "--gin", "train.eval_every = 20", "--run-dir", "r"]
    proc = subprocess.Popen(run_argv(small_corpus, *args), cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir, first = tmp_path / "r", tmp_path / "r" / "checkpoints" / "step_00000020"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (
            first.exists() and max(journaled_steps(run_dir, "train/loss"), default=0) >= 24):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(journaled_steps(run_dir, "train/loss"))
    assert first.exists() and 20 < killed_at < 40, killed_at  # steps 21..killed_at are logged and will be redone
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = only_run(client).info.run_id

    run_cli("run", *corpus_gin(small_corpus), *args, "--resume", cwd=tmp_path)
    run = only_run(client)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in ("train/loss", "train/lr", "train/tokens_per_s"):
        assert journaled_steps(run_dir, key) == list(range(1, 41)), key
        assert steps_of(client, run_id, key) == list(range(1, 41)), key
    assert steps_of(client, run_id, "eval/disc_auc") == [20, 40]


def test_training_survives_the_tracking_server_dying_mid_run(tmp_path, small_corpus, cache_dir):
    server = MlflowServer(tmp_path / "server").start()
    try:
        args = [*TINY, "--tracking-uri", server.uri, "--run-dir", "r",
                "--gin", "train.steps = 60", "--gin", "train.log_every = 2", "--gin", "train.checkpoint_every = 10"]
        proc = subprocess.Popen(run_argv(small_corpus, *args), cwd=tmp_path, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ckpts = tmp_path / "r" / "checkpoints"
        deadline = time.time() + 240
        while not (ckpts / "step_00000010").exists() and time.time() < deadline:
            time.sleep(0.05)
        server.kill()  # SIGKILL: like a crashed server
        while not (ckpts / "step_00000040").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        server.start()  # same port, same store
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert (tmp_path / "r" / "model" / "encoder.safetensors").is_file()
        client = MlflowClient(server.uri)
        run = only_run(client)
        assert run.info.status == "FINISHED"
        assert steps_of(client, run.info.run_id, "train/loss") == list(range(2, 61, 2)), "every logged step arrives once"
        assert "model/encoder.safetensors" in artifact_paths(client, run.info.run_id)
    finally:
        server.stop()


def test_a_run_killed_during_a_server_outage_is_delivered_exactly_once_by_sync(tmp_path, small_corpus, cache_dir):
    """The server dies, then the training process is SIGKILLed: what the server missed is in the run
    directory, and `electra-kit sync` delivers every logged step once (and nothing when run again)."""
    import json

    server = MlflowServer(tmp_path / "server").start()
    try:
        args = [*TINY, "--tracking-uri", server.uri, "--run-dir", "r",
                "--gin", "train.steps = 200", "--gin", "train.log_every = 2", "--gin", "train.checkpoint_every = 10"]
        proc = subprocess.Popen(run_argv(small_corpus, *args), cwd=tmp_path, env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpts = tmp_path / "r" / "checkpoints"
        deadline = time.time() + 240
        while not (ckpts / "step_00000010").exists() and time.time() < deadline:
            time.sleep(0.05)
        server.kill()
        while not (ckpts / "step_00000030").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.start()
        logged = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
                  if "train/loss" in line]
        assert logged and logged[-1] >= 30
        run_cli("sync", "r", "--tracking-uri", server.uri, cwd=tmp_path, timeout=120)  # never the file's store
        client = MlflowClient(server.uri)
        run = only_run(client)
        assert steps_of(client, run.info.run_id, "train/loss") == logged, "every journaled step once"
        assert "sent 0 metric values" in run_cli("sync", "r", "--tracking-uri", server.uri, cwd=tmp_path,
                                                 timeout=120).stdout
        assert steps_of(client, run.info.run_id, "train/loss") == logged
    finally:
        server.stop()


def test_ui_serves_the_store_the_runs_went_to(tmp_path, small_corpus, cache_dir):
    import json
    import urllib.request

    from mlflow_server import free_port

    run_cli("run", *corpus_gin(small_corpus), *TINY, "--gin", "train.steps = 5", "--run-dir", "run", cwd=tmp_path)
    port = free_port()
    ui = subprocess.Popen(cli_argv("ui", "--port", port), cwd=tmp_path, env=cli_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=2).read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the UI never answered"
        assert "tiny" in [e["name"] for e in body["experiments"]]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
