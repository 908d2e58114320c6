"""A tracked run's encoder as an MLflow Logged Model: linked to the run and its final metrics, registrable, and
served over HTTP by a real ``mlflow models serve`` on 127.0.0.1. The same run checks what the console shows."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import torch
from conftest import corpus_gin, run_cli
from mlflow import MlflowClient
from mlflow_server import free_port
from test_run_tracking import TINY, only_run

from electra_kit import load_pretrained
from electra_kit.tracking.runs import experiment_links

TEXTS = ["The state of the union is strong.", "Taxes and the budget."]


def serve(model_uri: str, tracking_uri: str, log: Path):
    port = free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1",  # it runs `uvicorn` from PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([exe, "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)
            return proc, port
        except OSError:
            time.sleep(1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"mlflow models serve did not come up: {log.read_text()[-2000:]}")


def mean_pooled(model_dir: Path) -> torch.Tensor:
    hidden, mask = load_pretrained(model_dir).encode(TEXTS)  # (b, n, d), (b, n)
    keep = mask[..., None].float()
    return (hidden * keep).sum(1) / keep.sum(1)


def test_run_logs_a_servable_registrable_encoder(tmp_path, small_corpus, cache_dir):
    proc = run_cli("run", *corpus_gin(small_corpus), *TINY, "--gin", "train.steps = 5", "--run-dir", "run",
                   cwd=tmp_path)
    # the console: a line per phase, MLflow's INFO lines only in the run's log
    for line in ("building the model ...", "saving the model folder", "uploading the run's last metrics",
                 "logging the encoder to MLflow as a Logged Model ...", "Logged Model models:/"):
        assert line in proc.stderr, proc.stderr
    assert " INFO mlflow" not in proc.stderr and " INFO mlflow" in (tmp_path / "run" / "run.log").read_text()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = only_run(client)
    [model] = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and model.name == "encoder"
    linked = {m.key: m.step for m in model.metrics}
    assert linked.get("train/loss") == 5 and linked.get("eval/disc_auc") == 5, linked  # the final metrics
    assert model.params["generator/backbone.name"] == "'transformer'"

    # `electra-kit ui` prints this link: it lands on the runs, whatever the browser's workflow switch says
    assert experiment_links(uri, "http://127.0.0.1:5000") == [
        ("tiny", f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}?workflowType=machine_learning")]

    mlflow.set_tracking_uri(uri)
    assert mlflow.register_model(f"models:/{model.model_id}", "electra-encoder").version == 1

    server, port = serve(f"models:/{model.model_id}", uri, tmp_path / "serve.log")
    try:
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=120))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    served = torch.tensor(answer["predictions"])
    assert served.shape == (2, 64)  # one mean-pooled vector of hidden_dim per text (size_tiny: 64)
    assert (served - mean_pooled(tmp_path / "run" / "model")).abs().max() < 1e-5
