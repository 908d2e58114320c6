"""Fine-tuned models you can use: `finetune` keeps the seed chosen on validation as a model folder,
`load_classifier` and `electra-kit predict` answer with it, and MLflow holds it as a Logged Model that
`mlflow models serve` answers over HTTP.

One tiny ELECTRA (10 pretraining steps through the CLI) is fine-tuned once for the module on the TREC
slice (2 seeds, 1 epoch) with a real SQLite MLflow store; every test reads what that run left.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import trec_split

from electra_kit import load_classifier, load_pretrained
from electra_kit.cli import main as cli_main


def cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "electra_kit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory, pretrained_model) -> dict:
    root = tmp_path_factory.mktemp("predict")
    trec_split(root)
    uri = f"sqlite:///{root}/mlflow.db"
    proc = cli("finetune", "--model", str(pretrained_model), "--train", "train.tsv", "--eval", "eval.tsv", "--seeds", "2",
               "--epochs", "1", "--no-progress", "--run-dir", "ft", "--tracking-uri", uri, cwd=root)
    results = json.loads((root / "ft" / "results.json").read_text())
    assert "Downloading artifacts" not in proc.stderr and "CloudPickle" not in proc.stderr  # MLflow's noise kept off
    return {"root": root, "uri": uri, "results": results, "stdout": proc.stdout, "model": root / "ft" / "model",
            "pretrained": pretrained_model}


def test_finetune_keeps_the_seed_chosen_on_validation_as_a_model_folder(run):
    results, folder = run["results"], run["model"]
    kept = results["kept_model"]
    val = [next(e["val_accuracy"] for e in s["epochs"] if e["epoch"] == s["selected_epoch"]) for s in results["seeds"]]
    assert kept["seed"] == results["seeds"][val.index(max(val))]["seed"]  # the validation score, ties: first seed
    assert kept["chosen_by"] == "val_accuracy" and kept["val_accuracy"] == max(val)
    assert kept["path"] == str(folder.resolve()) and f"kept seed {kept['seed']}" in run["stdout"]
    assert {"config.json", "encoder.safetensors", "classifier_head.safetensors", "tokenizer.json",
            "operative_config.gin", ".electra-kit.json", "modeling_electra_kit.py"} == {p.name for p in folder.iterdir()}
    task = json.loads((folder / "config.json").read_text())["task"]
    assert task["type"] == "classification" and task["labels"] == results["task"]["labels"]
    assert task["columns"] == {"text": "text", "pair": None, "label": "label"} and task["pooling"] == "cls"
    assert task["max_seq_len"] == results["task"]["max_seq_len"] and task["seed"] == kept["seed"]


def test_predict_on_the_eval_file_reproduces_the_reported_accuracy(run, capsys):
    root, kept = run["root"], run["results"]["kept_model"]
    before = (root / "eval.tsv").read_bytes()
    assert cli_main(["predict", str(run["model"]), "--input", str(root / "eval.tsv")]) == 0
    out = capsys.readouterr().out
    with open(root / "eval.predictions.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 60 and (root / "eval.tsv").read_bytes() == before
    labels = run["results"]["task"]["labels"]
    assert list(rows[0]) == ["label", "fine_label", "text", "predicted_label", "predicted_score",
                             *(f"predicted_score_{k}" for k in labels)]  # the gold label is kept as it was
    accuracy = sum(r["label"] == r["predicted_label"] for r in rows) / len(rows)
    assert accuracy == kept["metrics"]["accuracy"]  # exactly: the same examples, the same numbers
    assert f"accuracy {accuracy:.4f}" in out
    # the probabilities too, not only the argmax: their cross-entropy on the gold labels is the reported eval loss
    loss = -sum(math.log(float(r[f"predicted_score_{r['label']}"])) for r in rows) / len(rows)
    assert loss == pytest.approx(kept["metrics"]["eval_loss"], abs=1e-6)
    for r in rows:
        scores = {k: float(r[f"predicted_score_{k}"]) for k in labels}
        assert float(r["predicted_score"]) == max(scores.values()) == scores[r["predicted_label"]]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_python_api(run):
    classifier = load_classifier(run["root"] / "ft")  # the run directory finds its model/
    answers = classifier.predict(["What is the capital of France ?", "Who wrote Hamlet ?"])
    assert [set(a) for a in answers] == [{"label", "score", "scores"}] * 2
    assert list(answers[0]["scores"]) == classifier.labels == run["results"]["task"]["labels"]
    batch_of_one = classifier.predict("Who wrote Hamlet ?")[0]
    assert batch_of_one["label"] == answers[1]["label"]
    assert batch_of_one["score"] == pytest.approx(answers[1]["score"], abs=1e-5)
    with pytest.raises(ValueError, match="single texts"):
        classifier.predict(["a"], pairs=["b"])
    encoder = load_pretrained(run["model"])  # the fine-tuned encoder alone
    tuned = classifier.model.backbone.state_dict()
    assert all(torch.equal(v, tuned[k]) for k, v in encoder.backbone.state_dict().items())
    with pytest.raises(ValueError, match="not a fine-tuned model folder"):
        load_classifier(run["pretrained"])


def test_predict_formats_and_errors(run, tmp_path, capsys):
    texts = ["What is the capital of France ?", "Who wrote Hamlet ?"]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": i, "query": t}) + "\n" for i, t in enumerate(texts)))
    assert cli_main(["predict", str(run["model"]), "--input", str(tmp_path / "q.jsonl"), "--text-column", "query",
                     "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = load_classifier(run["model"]).predict(texts)
    assert [r["id"] for r in rows] == [0, 1] and [r["label"] for r in rows] == [e["label"] for e in expected]
    assert rows[0]["scores"] == pytest.approx(expected[0]["scores"])

    (tmp_path / "q.csv").write_text('text,source\n"Where is Rome, Italy ?",x\n')
    assert cli_main(["predict", str(run["model"]), "--input", str(tmp_path / "q.csv")]) == 0
    header = (tmp_path / "q.predictions.csv").read_text().splitlines()[0]
    assert header.startswith("text,source,label,score,score_")
    capsys.readouterr()

    def error(*args) -> str:
        assert cli_main(["predict", str(run["model"]), *args]) == 2
        return capsys.readouterr().err

    assert "q.jsonl: no text column among 'id', 'query'" in error("--input", str(tmp_path / "q.jsonl"))
    assert "no column 'nope' (--text-column)" in error("--input", str(tmp_path / "q.csv"), "--text-column", "nope")
    before = (tmp_path / "q.csv").read_bytes()
    assert "is an input of this command" in error("--input", str(tmp_path / "q.csv"), "--output", str(tmp_path / "q.csv"))
    assert (tmp_path / "q.csv").read_bytes() == before
    (tmp_path / "gap.tsv").write_text("text\tid\nfine\t1\n\t2\n")
    assert "gap.tsv:3: no value in column 'text'" in error("--input", str(tmp_path / "gap.tsv"))
    assert "missing.tsv: no such file" in error("--input", str(tmp_path / "missing.tsv"))
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_the_kept_model_is_a_logged_model_that_mlflow_serves(run, tmp_path):
    from mlflow import MlflowClient

    model_id = run["results"]["kept_model"]["mlflow_model_id"]
    client = MlflowClient(run["uri"])
    model = client.get_logged_model(model_id)
    (mlflow_run,) = client.search_runs([model.experiment_id])
    assert model.source_run_id == mlflow_run.info.run_id and model.name == "classifier"
    linked = {m.key: m.value for m in model.metrics}
    assert linked["eval/accuracy"] == run["results"]["kept_model"]["metrics"]["accuracy"]
    assert linked["val/accuracy"] == run["results"]["kept_model"]["val_accuracy"]

    from mlflow_server import free_port

    port = free_port()
    bin_dir = Path(sys.executable).parent  # `mlflow models serve` runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": run["uri"], "OMP_NUM_THREADS": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    exe = bin_dir / "mlflow"
    server = subprocess.Popen([str(exe), "models", "serve", "-m", f"models:/{model_id}", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env, start_new_session=True,
                              stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    texts = ["What is the capital of France ?", "Who wrote Hamlet ?"]
    body = json.dumps({"dataframe_records": [{"text": t} for t in texts]}).encode()
    try:
        answer = None
        deadline = time.monotonic() + 240
        while answer is None and time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
    expected = load_classifier(run["model"]).predict(texts)
    got = answer["predictions"]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-6)
    assert got[0]["scores"] == pytest.approx(expected[0]["scores"], abs=1e-6)
