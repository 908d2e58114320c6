"""`electra-kit finetune`: a tiny pretrained model fine-tuned on a TREC slice end to end (correctness,
not accuracy), text pairs, regression, every registered backbone, the file layouts, the metrics and
the errors, each naming its culprit.

tests/data/trec_slice.tsv: 300 questions of the TREC training set (Li & Roth 2002), made by
bench/prepare_trec.py; rows 1-240 come from its train split and 241-300 from its test split.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_lines, run_cli, trec_split
from tokenizers import Tokenizer

from electra_kit.finetune.model import SequenceModel
from electra_kit.finetune.runner import FinetuneConfig, TaskSpec, encode_examples, finetune
from electra_kit.finetune.tasks import TaskError, read_labeled, spearman, task_metrics
from electra_kit.registry import create_backbone, list_backbones
from electra_kit.training.optim import param_groups

CLASSES = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def finetune_main(*args, cwd) -> int:
    """``electra-kit finetune ...`` in this process (the end-to-end test runs the real command)."""
    from electra_kit.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return main(["finetune", "--no-tracking", "--no-progress", *args])
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def model_dir(pretrained_model) -> Path:
    """A tiny ELECTRA pretrained through the CLI (10 steps; conftest's, shared by the test run)."""
    return pretrained_model


@pytest.fixture(scope="module")
def trec(tmp_path_factory) -> tuple[Path, Path]:
    return trec_split(tmp_path_factory.mktemp("trec"))


def test_trec_slice_end_to_end_with_seeds_and_mlflow(tmp_path, model_dir, trec):
    train, evalf = trec
    proc = run_cli("finetune", "--model", str(model_dir.parent), "--train", str(train), "--eval", str(evalf),
               "--seeds", "2", "--epochs", "1", "--run-dir", "ft", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
               cwd=tmp_path)
    assert "median" in proc.stdout and "finetune seed 1" in proc.stderr  # the table and the progress bar
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["task"]["type"] == "classification" and results["task"]["labels"] == CLASSES
    assert results["task"]["n_train"] == 216 and results["task"]["n_val"] == 24 and results["task"]["n_eval"] == 60
    assert results["task"]["columns"] == {"text": "text", "pair": None, "label": "label"}  # found by name
    assert [s["seed"] for s in results["seeds"]] == [0, 1] and results["primary_metric"] == "accuracy"
    for key in ("accuracy", "f1", "macro_f1", "mcc", "eval_loss"):
        values = [s["metrics"][key] for s in results["seeds"]]
        assert all(np.isfinite(values)) and results["median"][key] == pytest.approx(statistics.median(values))
    assert all(0 <= s["metrics"]["accuracy"] <= 1 for s in results["seeds"])
    assert results["seeds"][0]["steps"] == 7 and results["recipe"]["layer_decay"] == 0.8  # ceil(216 / 32)
    assert all(s["selected_epoch"] == 1 for s in results["seeds"])  # one epoch: the only one to choose

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["task.type"] == "classification"
    assert run.data.metrics["median/accuracy"] == pytest.approx(results["median"]["accuracy"])
    assert "seed_1/accuracy" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["results.json"]


def test_tracked_and_untracked_fine_tuning_write_the_same_files(tmp_path, model_dir, trec, monkeypatch):
    """One journal, whatever tracks it: every seed's metrics in RUN_DIR/metrics.jsonl under seed_N/, tracked or not;
    tracking adds only its record of what MLflow was sent and the system metrics it samples."""
    from electra_kit.cli import main

    train, evalf = trec
    args = ["--model", str(model_dir), "--train", str(train), "--eval", str(evalf), "--seeds", "2", "--epochs", "1"]
    assert finetune_main(*args, "--run-dir", "plain", cwd=tmp_path) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--no-progress", *args, "--run-dir", "tracked",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0

    def files(run_dir):
        return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())

    def journal(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], sorted(k for k in r if k != "ts")) for r in rows if not any(k.startswith("system/") for k in r)]

    plain, tracked = tmp_path / "plain", tmp_path / "tracked"
    assert [f for f in files(tracked) if f != "mlflow_run.json"] == files(plain)
    assert journal(tracked) == journal(plain)
    keys = {k for _, ks in journal(plain) for k in ks}
    assert {"seed_0/train/loss", "seed_1/val/accuracy", "seed_1/accuracy", "median/accuracy"} <= keys, keys
    assert not any((plain / f"seed_{s}" / "metrics.jsonl").exists() for s in (0, 1))


def test_text_pair_csv(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    rows = ['"sentence1","sentence2","label"']
    for i in range(40):
        same = bool(rng.integers(2))
        rows.append(f'"The union, {i}, is strong.","{"The union is strong" if same else "Taxes rose"}.",'
                    f'{"yes" if same else "no"}')
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    assert finetune_main("--model", str(model_dir), "--train", "pairs.csv", "--eval", "pairs.csv", "--epochs", "1",
                         "--run-dir", "ft", cwd=tmp_path) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["task"]["columns"] == {"text": "sentence1", "pair": "sentence2", "label": "label"}
    assert results["task"]["labels"] == ["no", "yes"] and set(results["median"]) == {
        "accuracy", "f1", "macro_f1", "mcc", "eval_loss"}


def test_regression_jsonl(tmp_path, model_dir):
    with open(tmp_path / "scores.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"review": f"speech number {i} " * (1 + i % 4), "stars": 1 + (i % 4) * 1.25}) + "\n")
    assert finetune_main("--model", str(model_dir), "--train", "scores.jsonl", "--eval", "scores.jsonl",
                         "--text-column", "review", "--label-column", "stars", "--epochs", "1", "--run-dir", "ft",
                         cwd=tmp_path) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["task"]["type"] == "regression" and results["primary_metric"] == "spearman"
    assert set(results["median"]) == {"spearman", "pearson", "mse", "eval_loss"}
    assert all(np.isfinite(list(results["median"].values())))


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_fine_tunes(tmp_path, model_dir, trec, name):
    from electra_kit.modelfolder.pretrained import save_pretrained
    from electra_kit.objectives.mlm import MaskedLM

    kwargs = dict(num_tokens=2000, dim=32, depth=2, heads=2, max_seq_len=32, emb_dim=16)
    torch.manual_seed(0)
    model = MaskedLM(create_backbone(name, **kwargs))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    folder = save_pretrained(model, tmp_path / "model", tokenizer=tokenizer)
    cfg = FinetuneConfig(epochs=0.25, progress=False)
    results = finetune(folder, TaskSpec(train=str(trec[0]), eval=str(trec[1])), cfg)
    assert results["backbone"] == name and np.isfinite(results["median"]["eval_loss"])
    # the saved weights load into the backbone rebuilt with fine-tuning dropout
    from safetensors.torch import load_file

    from electra_kit.finetune.runner import load_backbone

    state = load_backbone(folder, dropout=0.1, random_init=False).state_dict()
    for key, tensor in load_file(folder / "encoder.safetensors").items():
        assert torch.equal(state[key], tensor), key
    # --random-init: the same architecture as pretraining starts it, N(0, 0.02) token embeddings
    fresh = load_backbone(folder, dropout=0.1, random_init=True).get_token_embedding().weight
    assert 0.015 < float(fresh.detach().std()) < 0.025


def test_layer_groups_and_layerwise_learning_rates():
    for name in list_backbones():
        backbone = create_backbone(name, num_tokens=64, dim=32, depth=3, heads=2, max_seq_len=32, emb_dim=16)
        groups = backbone.layer_groups()
        ids = [id(p) for g in groups for p in g]
        assert len(groups) == 4 and sorted(ids) == sorted({id(p) for p in backbone.parameters()}), name
        assert any(p is backbone.get_token_embedding().weight for p in groups[0]), name  # embeddings first
    model = SequenceModel(backbone, 6, 0.1)
    lrs = {g["depth"]: g["lr"] for g in param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.5)}
    assert lrs == {0: 0.5**5, 1: 0.5**4, 2: 0.5**3, 3: 0.5**2, 5: 1.0}  # ELECTRA's depths: head at L + 2


def test_pair_encoding_truncates_the_longer_text_first(model_dir):
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    (row,) = encode_examples(tok, ["the state of the union " * 10], ["congress"], 16)
    assert len(row) == 16 and row[0] == 3 and row.count(4) == 2 and row[-1] == 4  # [CLS] a [SEP] b [SEP]
    assert row[-2] == tok.encode("congress", add_special_tokens=False).ids[-1]


def test_glue_layouts(tmp_path):
    # CoLA: no header; MRPC: quotes left alone in TSV; QNLI: question/sentence
    (tmp_path / "cola.tsv").write_text('gj04\t1\t\tOur friends won\'t buy this "analysis".\ngj04\t0\t*\tThey drank the pub.\n')
    data, cols = read_labeled(tmp_path / "cola.tsv", header=False, text="3", label="1")
    assert data.texts[0] == 'Our friends won\'t buy this "analysis".' and data.labels == ["1", "0"]
    (tmp_path / "mrpc.tsv").write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\t"A" b\tc "d\n')
    data, cols = read_labeled(tmp_path / "mrpc.tsv")
    assert (cols.text, cols.pair, cols.label) == ("#1 String", "#2 String", "Quality")
    assert data.texts == ['"A" b'] and data.pairs == ['c "d']
    (tmp_path / "qnli.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n")
    _, cols = read_labeled(tmp_path / "qnli.tsv")
    assert (cols.text, cols.pair, cols.label) == ("question", "sentence", "label")


def test_metrics():
    y, p = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    m = task_metrics("classification", y, p, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    # confusion [[1, 1, 0], [0, 2, 0], [1, 0, 1]]: (c*s - p.t) / sqrt((s^2 - p.p)(s^2 - t.t)) = 12 / sqrt(22 * 24)
    assert m["mcc"] == pytest.approx(12 / (22 * 24) ** 0.5)
    binary = task_metrics("classification", np.array([0, 1, 1, 0]), np.array([1, 1, 1, 0]), 2)
    assert binary["f1"] == pytest.approx(0.8) and binary["mcc"] == pytest.approx(1 / 3**0.5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([10, 20, 20, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)


# ---- errors, each naming its culprit -----------------------------------------------------------


def error_of(capsys, tmp_path, *args):
    capsys.readouterr()
    code = finetune_main(*args, cwd=tmp_path)  # an unexpected exception fails the test with its traceback
    err = error_lines(capsys.readouterr().err)  # without the phase lines said before the error
    assert code == 2 and err.startswith("electra-kit: error: "), err
    return err


def test_unknown_column(capsys, tmp_path, model_dir, trec):
    err = error_of(capsys, tmp_path, "--model", str(model_dir), "--train", str(trec[0]), "--eval", str(trec[1]),
                   "--label-column", "category")
    assert "'category'" in err and "--label-column" in err and str(trec[0]) in err and "'fine_label'" in err


def test_label_set_mismatch_and_empty_file(capsys, tmp_path, model_dir, trec):
    lines = trec[1].read_text().splitlines(keepends=True)
    (tmp_path / "eval.tsv").write_text(lines[0] + "".join(lines[1:]) + "LOCATION\tcity\tWhere is Rome ?\n")
    err = error_of(capsys, tmp_path, "--model", str(model_dir), "--train", str(trec[0]), "--eval", "eval.tsv")
    assert "label set mismatch" in err and "'LOCATION'" in err and "eval.tsv" in err and "line 62" in err
    (tmp_path / "empty.jsonl").write_text("\n")
    err = error_of(capsys, tmp_path, "--model", str(model_dir), "--train", "empty.jsonl", "--eval", str(trec[1]))
    assert "empty.jsonl is empty" in err


def test_reader_errors_name_file_and_line(tmp_path):
    (tmp_path / "header_only.csv").write_text("text,label\n")
    with pytest.raises(TaskError, match="header_only.csv has a header but no rows"):
        read_labeled(tmp_path / "header_only.csv")
    (tmp_path / "gap.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(TaskError, match=r"gap.jsonl:2: no value in column 'label'"):
        read_labeled(tmp_path / "gap.jsonl")


# ---- learning, and choosing the epoch on a validation split ------------------------------------

POSITIVE, NEGATIVE = ["peace", "freedom", "prosperity", "liberty"], ["war", "taxes", "debt", "crisis"]
FILLER = ["the", "nation", "congress", "people", "will", "our", "and", "of", "in", "year", "must", "we"]


def separable(path: Path, n: int, seed: int) -> Path:
    """Sentences whose label is which word list their one keyword comes from (balanced: majority 0.5)."""
    rng = np.random.default_rng(seed)
    lines = ["text\tlabel"]
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, size=8))
        words.insert(int(rng.integers(0, 9)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        lines.append(f"{' '.join(words)}\t{'good' if label else 'bad'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fine_tuning_learns_a_separable_task(tmp_path, model_dir):
    train, test = separable(tmp_path / "train.tsv", 240, 0), separable(tmp_path / "test.tsv", 100, 1)
    cfg = FinetuneConfig(epochs=20, lr=1e-3, patience=0, progress=False)  # a 10-step pretrained model starts slowly
    results = finetune(model_dir, TaskSpec(train=str(train), eval=str(test)), cfg)
    (seed,) = results["seeds"]
    assert seed["metrics"]["accuracy"] >= 0.9, seed  # the majority class is 0.5 (0.99 measured)
    val = [e["val_accuracy"] for e in seed["epochs"]]
    assert len(val) == 20 and seed["selected_epoch"] == 1 + val.index(max(val))  # the first best epoch
    assert seed["epochs"][-1]["train_loss"] < 0.1 < seed["epochs"][0]["train_loss"]


def test_the_epoch_is_chosen_on_a_seeded_split_of_the_training_file(tmp_path, model_dir, trec):
    train, test = trec
    cfg = FinetuneConfig(epochs=3, progress=False, seeds=2)
    results = finetune(model_dir, TaskSpec(train=str(train), eval=str(test)), cfg)
    task = results["task"]
    assert (task["n_train"], task["n_val"], task["n_eval"]) == (216, 24, 60)  # 10 % of the 240 training rows
    for seed in results["seeds"]:
        assert [e["epoch"] for e in seed["epochs"]] == [1, 2, 3] and seed["selected_by"] == "val_accuracy"
        val = [e["val_accuracy"] for e in seed["epochs"]]
        assert seed["selected_epoch"] == 1 + val.index(max(val))
        assert not any(k.startswith("test") or k == "accuracy" for e in seed["epochs"] for k in e)  # no test peeking
    # the same split every time (seeded): a second run holds out the same rows
    from electra_kit.finetune.runner import prepare

    a, b = prepare(model_dir, TaskSpec(train=str(train), eval=str(test)), cfg), prepare(
        model_dir, TaskSpec(train=str(train), eval=str(test)), cfg)
    assert a.val_rows == b.val_rows and len(a.val_rows) == 24
    assert len(a.train_rows) + len(a.val_rows) == 240


def test_patience_stops_after_epochs_without_improvement(tmp_path, model_dir):
    from electra_kit.finetune.runner import _BestEpoch

    best = _BestEpoch(torch.nn.Linear(1, 1), "accuracy", steps_per_epoch=10, patience=2)
    stops = [best(step, {"accuracy": acc}) for step, acc in [(10, 0.5), (20, 0.6), (30, 0.6), (40, 0.55)]]
    assert stops == [False, False, False, True] and best.best["epoch"] == 2  # a tie is no improvement
    train, test = separable(tmp_path / "train.tsv", 240, 0), separable(tmp_path / "test.tsv", 40, 1)
    cfg = FinetuneConfig(epochs=20, lr=1e-3, patience=1, progress=False)
    (seed,) = finetune(model_dir, TaskSpec(train=str(train), eval=str(test)), cfg)["seeds"]
    assert seed["stopped_early"] and seed["steps"] < seed["max_steps"] and len(seed["epochs"]) < 20


def test_by_default_every_epoch_is_trained_and_the_best_kept(tmp_path, model_dir):
    """A validation score flat for many epochs does not stop training by default: pretrained encoders on small data
    sat on a plateau before the decaying learning rate let them improve (bench/RESULTS.md, issue 29 s. 16)."""
    from electra_kit.finetune.runner import _BestEpoch

    best = _BestEpoch(torch.nn.Linear(1, 1), "accuracy", steps_per_epoch=10, patience=FinetuneConfig().patience)
    plateau = [0.62] * 8 + [0.70]
    assert not any(best(10 * (i + 1), {"accuracy": acc}) for i, acc in enumerate(plateau))
    assert best.best["epoch"] == 9
    train, test = separable(tmp_path / "train.tsv", 240, 0), separable(tmp_path / "test.tsv", 40, 1)
    (seed,) = finetune(model_dir, TaskSpec(train=str(train), eval=str(test)),
                       FinetuneConfig(epochs=4, lr=1e-3, progress=False))["seeds"]
    assert not seed["stopped_early"] and len(seed["epochs"]) == 4


def test_no_validation_split_reports_the_last_epoch(tmp_path, model_dir, trec):
    cfg = FinetuneConfig(epochs=2, val_fraction=0.0, progress=False)
    (seed,) = finetune(model_dir, TaskSpec(train=str(trec[0]), eval=str(trec[1])), cfg)["seeds"]
    assert seed["selected_epoch"] == 2 and seed["selected_by"].startswith("last epoch")


def test_a_validation_split_too_large_for_the_file_names_the_flag(capsys, tmp_path, model_dir):
    (tmp_path / "four.tsv").write_text("text\tlabel\na\tx\nb\ty\nc\tx\nd\ty\n")
    message = error_of(capsys, tmp_path, "--model", str(model_dir), "--train", "four.tsv", "--eval", "four.tsv",
                       "--val-fraction", "0.9")
    assert "four.tsv" in message and "--val-fraction" in message


def test_fine_tuning_ignores_a_pretraining_config_parsed_earlier_in_the_process():
    """A script that pretrains and then fine-tunes: the pretraining's ``train.*`` bindings stay with pretraining
    (they once leaked into fine-tuning's TrainConfig, and a macro bound there broke it)."""
    import gin
    from electra_kit.finetune.runner import _train_config
    from electra_kit.training.pretrain import parse_config
    from electra_kit.training.settings import configured_train

    parse_config(["tiny.gin"], ["train.grad_accum_steps = 2", "train.max_bad_steps = 9"])
    try:
        assert configured_train().grad_accum_steps == 2  # pretraining reads them
        train, _ = _train_config(FinetuneConfig(progress=False), seed=0, n_train=64)
        assert (train.grad_accum_steps, train.max_bad_steps) == (1, 5)
    finally:
        gin.clear_config()
