"""The throughput benchmark runs (tiny size, no timing assertions), and the fast paths it measured
keep the objective's behaviour: the sampler's distribution, the no-padding backbone path, the
Reformer feed-forward chunking."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import trec_split

from electra_kit import Electra, create_backbone, list_backbones
from electra_kit.objectives.masking import sample_categorical

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--steps", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| case |" in proc.stdout
    result = json.loads(out.read_text())
    names = set(result["rows"])
    assert {f"kit/{b}" for b in ("transformer", "reformer", "performer")} <= names
    for row in result["rows"].values():
        assert row["tokens_per_s"] > 0
        assert row["memory_bytes"] is None or row["memory_bytes"] > 0
    # peers are optional at the tiny size: present when installed, skipped with a note otherwise
    import importlib.util

    if importlib.util.find_spec("electra_pytorch") is not None:
        assert "orig/transformer" in names
        assert "kit/transformer vs orig/transformer" in result["ratios"]
    else:
        assert "note: skipping a peer" in proc.stdout


def test_sample_categorical_draws_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, float("-inf")]]).expand(20000, 5)  # (rows, V)
    for temperature in (1.0, 0.5):
        draws = sample_categorical(logits, temperature)  # (rows,)
        freq = torch.bincount(draws, minlength=5).float() / draws.numel()
        expected = torch.softmax(logits[0] / temperature, dim=-1)
        assert (freq - expected).abs().max() < 0.015, (temperature, freq, expected)
        assert freq[4] == 0  # a zero-probability entry is never drawn


def test_sample_categorical_keeps_leading_dims():
    logits = torch.randn(3, 4, 50)
    assert sample_categorical(logits, 1.0).shape == (3, 4)
    assert sample_categorical(logits, 1.0).max() < 50


def _pair(name):
    kw = dict(num_tokens=64, heads=2, max_seq_len=32, emb_dim=16)
    torch.manual_seed(0)
    g, d = create_backbone(name, dim=16, depth=1, **kw), create_backbone(name, dim=32, depth=2, **kw)
    return Electra(g, d, mask_token_id=2, pad_token_id=0, mask_ignore_token_ids=(3, 4))


@pytest.mark.parametrize("name", [b for b in ("transformer", "reformer", "performer") if b in list_backbones()])
def test_padding_free_batches_skip_the_backbone_mask_with_the_same_result(name, monkeypatch):
    model = _pair(name).train()
    ids = torch.randint(5, 64, (3, 32))
    ids[:, 0], ids[:, -1] = 3, 4
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert Electra._backbone_mask(mask) is None
    assert Electra._backbone_mask(torch.cat([mask[:, :-1], ~mask[:, -1:]], 1)) is not None
    torch.manual_seed(1)
    fast = model.compute(ids, mask)
    monkeypatch.setattr(Electra, "_backbone_mask", staticmethod(lambda m: m))
    torch.manual_seed(1)
    masked = model.compute(ids, mask)
    assert torch.allclose(fast.loss, masked.loss, atol=1e-5), (fast.loss, masked.loss)
    assert torch.allclose(fast.disc_logits, masked.disc_logits, atol=1e-4)


def test_reformer_feed_forward_chunking_does_not_change_values():
    kw = dict(num_tokens=64, dim=32, depth=2, heads=2, max_seq_len=64, emb_dim=16, use_full_attn=True)
    torch.manual_seed(0)
    one = create_backbone("reformer", **kw).eval()
    chunks = {m.chunks for m in one.modules() if type(m).__name__ == "Chunk"}
    assert chunks == {1}, chunks  # our default below 1024 positions
    torch.manual_seed(0)
    many = create_backbone("reformer", ff_chunks=100, **kw).eval()
    ids = torch.randint(1, 64, (2, 64))
    with torch.no_grad():
        assert torch.allclose(one(ids), many(ids), atol=1e-5)


def test_drawn_ahead_noise_gives_the_same_step():
    """What a compiled step does with the trainer's generator (draw first, then consume) changes nothing."""
    from electra_kit.objectives.noise import Noise, draw_ahead

    model = _pair("transformer").train()
    model.random_token_prob, model.replace_prob = 0.1, 0.8
    model.register_buffer("random_token_pool", torch.arange(5, 64), persistent=False)
    ids = torch.randint(5, 64, (4, 32))
    direct = model.compute(ids, noise=Noise(torch.Generator().manual_seed(7)))
    drawn = draw_ahead(Noise(torch.Generator().manual_seed(7)), model._noise_plan(4, 32), ids.device)
    ahead = model.compute(ids, noise=drawn)
    assert torch.equal(direct.disc_labels, ahead.disc_labels)
    assert torch.allclose(direct.loss, ahead.loss)
    assert not drawn._tensors  # every planned draw was used


def test_the_objective_compiles_to_one_graph_with_an_explicit_generator():
    import torch._dynamo as dynamo

    from electra_kit.objectives.noise import Noise

    model = _pair("transformer").train()
    ids = torch.randint(5, 64, (2, 32))
    dynamo.reset()
    explained = dynamo.explain(model)(ids, ids != 0, return_output=True, noise=Noise(torch.Generator().manual_seed(0)))
    dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons


# ------------------------------------------------------------------ long sequences (issue 14, item 3)


def _bench_module(name):
    import importlib

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_long_sequence_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "long.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "long_sequences.py"), "--tiny", "--peers", "hf+eager", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| crossover |" in proc.stdout
    result = json.loads(out.read_text())
    assert not result["partial"] and set(result["lengths"]) == {"64", "128"}
    import importlib.util

    peers = {"hf+eager"} if importlib.util.find_spec("electra_pytorch") else set()  # optional at the tiny size
    for rows in result["lengths"].values():
        assert {"kit/transformer", "kit/reformer", "kit/performer"} | peers == set(rows)
        for row in rows.values():
            assert row["tokens_per_s"] > 0 and row["memory_bytes"] > 12 * row["params"]
    assert "kit/reformer vs kit/transformer" in result["crossover"]


def test_long_sequence_benchmark_predicts_memory_and_finds_the_crossover():
    long = _bench_module("long_sequences")
    quadratic = [(n, 1000 + 3 * n + 2 * n * n) for n in (512, 1024, 2048)]
    assert long.extrapolate(4096, quadratic) == 1000 + 3 * 4096 + 2 * 4096**2
    assert long.extrapolate(4096, [(1024, 10), (2048, 20)]) == 40
    small = _bench_module("cases").SHAPES["small"]
    # the (n x n) scores of 60 heads x layers: over 16 GiB at 8192 whatever short lengths measured
    assert long.predict_bytes("hf+eager", 8192, quadratic, small, 14_000_000) > 16 * 2**30
    assert long.predict_bytes("hf", 8192, [], small, 14_000_000) < 4 * 2**30

    def rows(fast, exact, skipped=False):
        exact_row = {"skipped": True} if skipped else {"skipped": False, "per_round_tokens_per_s": [exact], "memory_bytes": 2}
        return {"kit/reformer": {"skipped": False, "per_round_tokens_per_s": [fast], "memory_bytes": 1}, "hf": exact_row}

    by_length = {512: rows(1, 4), 1024: rows(1, 2), 2048: rows(1, 1.0 / 2), 4096: rows(1, 0, skipped=True)}
    assert long.crossover(by_length, "kit/reformer", "hf")["length"] == round(2 ** 10.5)  # 1/2x -> 2x: halfway
    assert long.crossover({512: rows(1, 2)}, "kit/reformer", "hf")["length"] is None
    assert long.crossover({512: rows(1, 2), 1024: rows(1, 0, skipped=True)}, "kit/reformer", "hf")["length"] == 1024


@pytest.mark.parametrize("config", ["reformer_long.gin", "performer_long.gin"])
def test_long_configs_match_the_benchmark_and_train_at_a_reduced_length(config, tmp_path, small_corpus, cache_dir):
    """The gin files set what bench/long_sequences.py measures; a few steps of each at 256 tokens
    (tiny widths) run through the CLI."""
    text = (ROOT / "gin" / config).read_text()
    backbone = config.split("_")[0]
    bound = {line.split("=")[0].strip()[len("backbone."):]: line.split("=")[1].split("#")[0].strip()
             for line in text.splitlines() if line.startswith("backbone.")}
    assert bound == {k: str(v) for k, v in _bench_module("long_sequences").LONG_OPTIONS[backbone].items()}
    assert "MAX_SEQ_LEN = 4096" in (ROOT / "gin" / "long.gin").read_text()
    tiny = {"backbone.emb_dim": 32, "discriminator/backbone.dim": 64, "discriminator/backbone.depth": 2,
            "discriminator/backbone.heads": 2, "generator/backbone.dim": 32, "generator/backbone.depth": 1,
            "MAX_SEQ_LEN": 256, "BATCH_SIZE": 2, "VOCAB_SIZE": 2000, "TRAIN_STEPS": 3, "train.warmup_steps": 1,
            "train.eval_every": 3, "train.eval_batches": 1, "train.checkpoint_every": 3, "train.progress": False}
    argv = [sys.executable, "-m", "electra_kit", "run", config, "--no-tracking", "--run-dir", "run",
            "--gin", f"build_data.corpus = '{small_corpus}/*.txt'"]
    for key, value in tiny.items():
        argv += ["--gin", f"{key} = {value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step_00000003").exists()
    assert "MAX_SEQ_LEN = 256" in (tmp_path / "run" / "operative_config.gin").read_text()


def test_precision_curves_tabulate_each_runs_last_evaluation(tmp_path):
    """Two tiny journals per precision: the table holds each run's last eval and the tokens/s median."""
    for name, auc in (("fp32_s0", 0.80), ("fp32_s1", 0.82), ("bf16_s0", 0.81), ("bf16_s1", 0.79)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        lines = [{"step": s, "train/loss": 30 - s / 10, "train/tokens_per_s": 1000 + s} for s in (10, 20, 30)]
        lines += [{"step": 20, "eval/disc_auc": 0.5, "eval/loss": 25.0, "eval/gen_loss": 8.0},
                  {"step": 30, "eval/disc_auc": auc, "eval/loss": 24.0, "eval/gen_loss": 7.0}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "pc.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "precision_curves.py"), str(tmp_path / "runs"),
                           "--json", str(out), "--plot", str(tmp_path / "pc.png")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())["summary"]
    assert sorted(r["disc_auc"] for r in summary["fp32"]) == [0.80, 0.82]
    assert [r["tokens_per_s"] for r in summary["bf16"]] == [1020, 1020] and (tmp_path / "pc.png").stat().st_size
    assert "fp32: AUC mean 0.8100, seed spread 0.0200" in proc.stdout


def evm_row(kind, flops, *accuracies):
    """A row of electra_vs_mlm's report: one pretrained model, fine-tuned on TREC-6 once per accuracy."""
    return {"kind": kind, "pretrain_flops": flops,
            "finetune": {"trec": {"seeds": [{"metrics": {"accuracy": a}} for a in accuracies]}}}


def test_electra_vs_mlm_trend_finds_where_the_lines_reach_the_bar():
    """Medians on straight lines in log10 FLOPs: ELECTRA 0.70 + 0.10/decade from 1e12, MLM 0.74 + 0.02/decade,
    random init 0.70. ELECTRA reaches 0.78 at 10^12.8 and passes MLM at 10^12.5."""
    evm, row = _bench_module("electra_vs_mlm"), evm_row
    rows = [row("ELECTRA", 1e12, 0.70), row("ELECTRA", 1e13, 0.80), row("MLM", 1e12, 0.74), row("MLM", 1e13, 0.76),
            row("random init", 0.0, 0.70)]
    t = evm.trend(rows, "trec", 0.08)
    assert t["fits"]["ELECTRA"]["per_decade"] == pytest.approx(0.10) and t["target"] == pytest.approx(0.78)
    assert t["electra_reaches_target_at_flops"] == pytest.approx(10 ** 12.8)
    assert t["electra_passes_mlm_from_flops"] == pytest.approx(10 ** 12.5)
    flat = [row("ELECTRA", 1e12, 0.70), row("ELECTRA", 1e13, 0.70), *rows[2:]]
    assert evm.trend(flat, "trec", 0.08)["electra_reaches_target_at_flops"] is None  # a flat line never gets there
    assert evm.trend(rows[:1] + rows[2:], "trec", 0.08) is None  # one ELECTRA budget: no line
    near = [row("ELECTRA", 1e12, 0.70), row("ELECTRA", 1e13, 0.72 + 1e-15), row("MLM", 1e12, 0.74), row("MLM", 1e13, 0.76),
            rows[-1]]  # slopes equal but for rounding: they meet (far) beyond any budget, not in an overflow
    assert evm.trend(near, "trec", 0.08)["electra_passes_mlm_from_flops"] == math.inf
    assert "passes MLM from" in evm.describe_trend(t, "trec")
    alone = evm.trend(rows[:2] + rows[3:], "trec", 0.08)  # MLM at one budget (a study cut short): ELECTRA's line alone
    assert alone["electra_reaches_target_at_flops"] == pytest.approx(10 ** 12.8) and "MLM" not in alone["fits"]
    assert "MLM under 2 budgets" in evm.describe_trend(alone, "trec")
    bent = [*rows, row("ELECTRA", 1e14, 0.84)]  # 0.10 then 0.04 per decade: the line misses by 0.02
    assert evm.trend(bent, "trec", 0.08)["fits"]["ELECTRA"]["worst_miss"] == pytest.approx(0.02)


def test_electra_vs_mlm_pools_pretraining_seeds():
    """--pretrain-seeds: one run per objective, budget and seed (seed 0 under its old name, binding nothing), and a
    budget's point pools every pretraining seed's fine-tuning accuracies."""
    evm = _bench_module("electra_vs_mlm")
    args = argparse.Namespace(electra_steps="100", pretrain_seeds="0,1", mlm_seeds=None, budget_seeds=None,
                              gin=["x = 1"], electra_config="e.gin", mlm_config="m.gin")
    jobs = evm.pretrain_jobs(args, {"electra": 3.0, "mlm": 2.0})
    assert [(j["name"], j["steps"], j["bindings"]) for j in jobs] == [
        ("electra_100", 100, ["x = 1"]), ("mlm_150", 150, ["x = 1"]),
        ("electra_100_seed1", 100, ["x = 1", "train.seed = 1"]), ("mlm_150_seed1", 150, ["x = 1", "train.seed = 1"])]
    args.pretrain_seeds, args.mlm_seeds = "0,1,2", "0"  # MLM's seeds fewer, where compute is short
    assert [j["name"] for j in evm.pretrain_jobs(args, {"electra": 3.0, "mlm": 2.0})] == [
        "electra_100", "mlm_150", "electra_100_seed1", "electra_100_seed2"]
    args.electra_steps, args.pretrain_seeds, args.budget_seeds = "100,400", "0", "400=0,1"  # more seeds at one budget
    assert [j["name"] for j in evm.pretrain_jobs(args, {"electra": 3.0, "mlm": 2.0})] == [
        "electra_100", "mlm_150", "electra_400", "mlm_600", "electra_400_seed1"]

    row = evm_row
    rows = [row("ELECTRA", 1e12, 0.70, 0.72), row("ELECTRA", 1e12, 0.80, 0.90), row("ELECTRA", 1e13, 0.85),
            row("MLM", 1e12, 0.60)]
    assert evm.by_budget(rows, "ELECTRA", "trec") == [(1e12, [0.70, 0.72, 0.80, 0.90]), (1e13, [0.85])]
    rows += [row("MLM", 1e13, 0.61), row("random init", 0.0, 0.5)]
    assert evm.trend(rows, "trec", 0.08)["fits"]["ELECTRA"]["per_decade"] == pytest.approx(0.85 - 0.76)


def test_electra_vs_mlm_finetune_tag_reports_its_own_finetunings_beside_the_earlier_ones(tmp_path, monkeypatch, capsys):
    """--finetune-tag names a study's fine-tunings apart (finetune_TASK_MODEL_TAG), so an out-dir's encoders can be
    fine-tuned again under other flags: --finished-only then reports the tagged runs, never the untagged ones."""
    evm = _bench_module("electra_vs_mlm")
    out = tmp_path / "runs"
    model = out / "pretrain_electra_100" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (out / "pretrain_electra_100.json").write_text(json.dumps(
        {"name": "electra_100", "config": "electra_cpu.gin", "steps": 100, "wall_s": None, "model_dir": str(model)}))

    def finetuned(name, *accuracies, where=out):
        (where / name).mkdir(parents=True)
        (where / name / "results.json").write_text(json.dumps(
            {"seeds": [{"metrics": {"accuracy": a}} for a in accuracies], "median": {"accuracy": sorted(accuracies)[1]}}))

    finetuned("finetune_trec_electra_100", 0.50, 0.51, 0.52)
    finetuned("finetune_trec_random", 0.40, 0.41, 0.42)
    finetuned("finetune_trec_electra_100_pat0", 0.90, 0.91, 0.92)
    finetuned("finetune_trec_random_pat0", 0.80, 0.81, 0.82)
    monkeypatch.setattr(evm, "plot", lambda *a: None)
    report = tmp_path / "report.json"

    def study(*flags, where=out):
        evm.main(["--electra-steps", "100", "--tasks", "trec", "--seeds", "3", "--out-dir", str(where), "--json",
                  str(report), "--plot", str(tmp_path / "p.png"), "--finished-only", *flags])
        return json.loads(report.read_text())["medians"]["trec"]

    assert study("--finetune-tag", "pat0") == {"ELECTRA 100 steps": 0.91, "random init": 0.81}
    assert study() == {"ELECTRA 100 steps": 0.51, "random init": 0.41}  # untagged: the earlier runs, as before
    assert "0.9000, 0.9100, 0.9200" in capsys.readouterr().out
    # --merge: the study continued on another machine, whose out-dir holds only what was run there
    study("--finetune-tag", "pat0")
    elsewhere = tmp_path / "elsewhere"
    finetuned("finetune_trec_random_pat0", 0.70, 0.71, 0.72, where=elsewhere)
    assert study("--finetune-tag", "pat0", "--merge", where=elsewhere) == {"ELECTRA 100 steps": 0.91, "random init": 0.71}
    # the same budget pretrained again there (another encoder: its evaluation differs) is a row of its own, pooled
    again = elsewhere / "pretrain_electra_100" / "model"
    again.mkdir(parents=True)
    (again / "config.json").write_text("{}")
    (elsewhere / "pretrain_electra_100.json").write_text(json.dumps(
        {"name": "electra_100", "config": "electra_cpu.gin", "steps": 100, "wall_s": None, "model_dir": str(again),
         "eval": {"eval/disc_auc": 0.8}}))
    finetuned("finetune_trec_electra_100_pat0", 0.60, 0.61, 0.62, where=elsewhere)
    assert study("--finetune-tag", "pat0", "--merge", where=elsewhere) == {
        "ELECTRA 100 steps": 0.91, "random init": 0.71, "ELECTRA 100 steps (pretrained again)": 0.61}
    assert json.loads(report.read_text())["budget_medians"]["trec"]["ELECTRA"][0]["runs"] == 6
    with pytest.raises(SystemExit):  # a tag is part of a folder name: no path in it
        study("--finetune-tag", "../x")
    assert "--finetune-tag '../x'" in capsys.readouterr().err


def test_electra_vs_mlm_resumes_a_fine_tuning_and_adds_seeds_to_a_finished_one(tmp_path, pretrained_model):
    """--reuse continues a fine-tuning the driver left (finetune --resume): its finished seeds are kept and only
    what is missing is trained; the log keeps what the earlier run wrote. Real fine-tunings of the tiny model."""
    evm = _bench_module("electra_vs_mlm")
    data, out = tmp_path / "data", tmp_path / "runs"
    data.mkdir(), out.mkdir()
    train, test = trec_split(data)
    train.rename(data / "trec_train.tsv"), test.rename(data / "trec_test.tsv")  # the driver's names
    args = argparse.Namespace(finetune_args="--epochs 1", reuse=True, data=data, seeds=1, task_seeds="")
    one = evm.finetune_run("tiny", str(pretrained_model), "trec", args, out)
    args.seeds = 2
    two = evm.finetune_run("tiny", str(pretrained_model), "trec", args, out)
    assert [s["seed"] for s in two["seeds"]] == [0, 1] and two["seeds"][0] == one["seeds"][0]
    log = (out / "finetune_trec_tiny.log").read_text()
    assert log.count("seed 0: trained all") == 1 and "seed 0: finished earlier" in log and "seed 1: trained all" in log
    args.finetune_args = "--epochs 2"  # other flags: the driver refuses to mix them into the run
    with pytest.raises(SystemExit, match="was fine-tuned with"):
        evm.finetune_run("tiny", str(pretrained_model), "trec", args, out)


# ------------------------------------------------------------------ the GPU check (issue 24, item 3)


def _gpu_check(tmp_path, **env):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SMOKE": "1", "INSTALL": "0", "WORK": str(work),
           "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)
    return proc, out, work


def test_gpu_check_smoke_runs_every_stage_and_writes_at_most_8_files(tmp_path):
    """SMOKE=1 DEVICE=cpu: every stage at tiny sizes under its timeout; OUT gets the table, the merged JSON and
    one log per stage, nothing else (the run directory, MLflow store and caches stay in WORK)."""
    proc, out, work = _gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*"))
    assert len(files) <= 8 and all((out / f).is_file() for f in files), files
    assert {"table.md", "results.json", "setup.log", "run.log", "small.log", "compiled.log"} <= set(files)
    result = json.loads((out / "results.json").read_text())
    assert [s["exit"] for s in result["stages"]] == ["0"] * 6, result["stages"]
    assert sum(int(s["budget_s"]) for s in result["stages"]) <= 450 - 20  # the report's 20 s make 450
    real = result["real_run"]
    assert real["mlflow_status"] == "FINISHED" and real["steps"] == 10, real
    assert any(k.startswith("system/cpu") for k in real["system_metrics"]), real
    assert "kit/transformer+nomask vs kit/transformer" in result["compiled"]["ratios"]
    assert set(result["long"]["lengths"]) == {"64", "128"} and not result["long"]["partial"]
    table = (out / "table.md").read_text()
    assert "| run | 120 |" in table and "status FINISHED" in table and "| 128 | kit/reformer |" in table
    assert (work / "mlflow.db").exists() and (work / "run" / "metrics.jsonl").exists()


def test_gpu_check_refuses_a_python_its_wheels_do_not_fit(tmp_path):
    """INSTALL=1 with a wheel folder built for other Pythons: the setup fails naming both, nothing else runs,
    and the table still says so."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pythons.txt").write_text("3.99\n")
    proc, out, _ = _gpu_check(tmp_path, INSTALL="1", WHEELS=str(wheels))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    here = "%d.%d" % sys.version_info[:2]
    assert f"this machine's Python is {here}; {wheels} holds wheels for 3.99 only" in (out / "setup.log").read_text()
    assert f"PYTHONS={here} bash bench/gpu_wheels.sh" in proc.stdout + proc.stderr
    assert "not run (the setup failed)" in (out / "table.md").read_text()


def test_gpu_learn_smoke_pretrains_both_objectives_fine_tunes_and_records_every_run(tmp_path, small_corpus):
    """Issue 29, item 4 prepared: SMOKE=1 DEVICE=cpu runs every stage of bench/gpu_learn.sh at tiny sizes on a corpus
    packed by its --pack: the probe's seconds per step set ELECTRA's steps, MLM gets its equal FLOPs, each encoder and
    random init is fine-tuned, and MLflow holds all five runs, finished."""
    script, corpus, out, work = ROOT / "bench" / "gpu_learn.sh", tmp_path / "corpus.tar.xz", tmp_path / "out", tmp_path / "w"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SMOKE": "1", "INSTALL": "0", "WORK": str(work),
           "CORPUS": str(corpus)}
    packed = subprocess.run(["bash", str(script), "--pack", str(small_corpus), "0.1"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert packed.returncode == 0 and "files (every " in packed.stdout, packed.stdout + packed.stderr
    proc = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = [line.split("\t") for line in (work / "stages.tsv").read_text().splitlines()]
    assert [(s[0], s[3]) for s in stages] == [(n, "0") for n in ("setup", "corpus", "probe", "study", "report")]
    steps = int((work / "steps.txt").read_text())
    report = json.loads((out / "learn.json").read_text())
    kinds = {r["kind"]: r for r in report["rows"]}
    assert kinds["ELECTRA"]["pretrain"]["steps"] == steps and set(kinds) == {"ELECTRA", "MLM", "random init"}
    mlm_flops = kinds["MLM"]["pretrain_flops"]
    assert abs(mlm_flops - kinds["ELECTRA"]["pretrain_flops"]) < report["flops_per_step"]["mlm"]  # equal FLOPs
    assert all("amazon" in r["finetune"] for r in report["rows"])
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5, [(r.info.run_name, r.info.status) for r in runs]
    table = (out / "table.md").read_text()
    assert "product-review polarity accuracy" in table and "| study | 270 |" in table


def test_cases_stack_options_and_nomask_drops_only_the_backbone_mask():
    cases = _bench_module("cases")
    s = cases.SHAPES["tiny"]
    case = cases.Case("kit/transformer+compile+nomask", s, torch.device("cpu"), "fp32")
    assert case.forward_model is not case.model  # compiled (lazily: nothing compiles until a step)
    mask = torch.ones(2, s.seq, dtype=torch.bool)
    assert case.model._backbone_mask(mask) is None
    assert Electra._backbone_mask(torch.cat([mask[:, :-1], ~mask[:, -1:]], 1)) is not None  # the class keeps its own
    for bad in ("kit/transformer+nomask+eager", "kit/transformer+compile+fast"):
        with pytest.raises(SystemExit):
            cases.Case(bad, s, torch.device("cpu"), "fp32")


def test_build_corpus_cleaners_strip_each_sources_markup():
    """bench/build_corpus.py's cleaners on small inline samples of each format (nothing is downloaded)."""
    bc = _bench_module("build_corpus")
    gcide = bc.clean_gcide('Virtu \\Vir*tu"\\ (?; 277), n. [It. virt[`u] virtue. See {Virtue}.]\n'
                           '   A love of the fine arts. --J. Spence.\n   [1913 Webster]\n')
    assert bc.paragraphs(gcide) == ["Virtu, n. [It. virtu virtue. See Virtue.] A love of the fine arts. --J. Spence."]
    assert bc.paragraphs(bc.clean_gcide('Cheese cloth \\Cheese" cloth`\\ (chez" kl[o^]th`; 115).\n'
                                        'Scuba \\Self`-con*tained"\n   Apparatus\\, n. A device.')) \
        == ["Cheese cloth (chez\" kloth`; 115). Scuba, n. A device."]
    wn = bc.clean_wordnet("pig\n    n 1: domestic swine [syn: {hog}, {pig}]\n    2: a coarse obnoxious person\n"
                          "    v 1: eat greedily; \"he pigged out\"\n")
    assert bc.paragraphs(wn) == ["pig (n): domestic swine", "pig (n): a coarse obnoxious person",
                                 'pig (v): eat greedily; "he pigged out"']
    assert bc.paragraphs(bc.clean_glossary("blurgle\n /bler'gl/, n.\n\n    [UK] Spoken {metasyntactic variable}.\n")) \
        == ["blurgle: [UK] Spoken metasyntactic variable."]
    assert bc.paragraphs(bc.clean_glossary("FL\n\n   <language> Function Level, by {John Backus}.\n")) \
        == ["FL: Function Level, by John Backus."]
    assert bc.paragraphs(bc.clean_fortunes("One cookie,\n\ttwo lines.\n\n-- Me\n%\nAnother one.\n%\n")) \
        == ["One cookie, two lines. -- Me", "Another one."]
    osis = ('<title type="main">GENESIS</title> <w lemma="strong:H07225">In the beginning</w> God'
            '<note type="x-strongsMarkup">a note</note> created &amp; made.')
    assert bc.paragraphs(bc.strip_osis(osis)) == ["GENESIS", "In the beginning God created & made."]


def test_build_corpus_cleaners_turn_docs_into_prose():
    bc = _bench_module("build_corpus")
    rst = ("Title\n=====\n\n.. note::\n\n   Kept :func:`~os.path.join` and ``code``.\n\nA :ref:`wrapped\nrole <x>`.\n\n"
           ".. code-block:: python\n\n   dropped = 1\n\nSee `the site <http://x>`_ and **bold**::\n\n"
           "    literal dropped\n\n.. a comment\n   still comment\n\nEnd *here*.\n")
    assert bc.paragraphs(bc.clean_rst(rst)) == ["Title", "Kept os.path.join and code.", "A wrapped role.",
                                                "See the site and bold:",
                                                "End here."]
    pod = ("=head1 NAME\n\nperlfoo - the B<bold> C<< $x->y >> L<perlfunc/open> E<lt>tagE<gt>X<idx>\n\n"
           "    my $code = 1;\n\n=begin html\n\n<p>gone</p>\n\n=end html\n\n=cut\n")
    assert bc.paragraphs(bc.clean_pod(pod)) == ["NAME", "perlfoo - the bold $x->y perlfunc open <tag>"]
    page = ('<html><head><title>T</title><script>x()</script></head><body><nav>Home</nav>'
            '<div class="navheader">Prev Up Next</div><h1>Heading</h1><p>First &amp; <b>bold</b>.<p>Second'
            '<pre>code()</pre><ul><li>one<li>two</ul></body></html>')
    assert bc.paragraphs(bc.html_to_text(page)) == ["Heading", "First & bold.", "Second", "one", "two"]
    vim = ("*usr_01.txt*\tFor Vim version 9.0.\n\n==============\nSee |:help| and *tag* here: >\n"
           "\t:set nocp\n<\nAfter the example.\n vim:tw=78:ts=8:ft=help\n")
    assert bc.paragraphs(bc.clean_vimhelp(vim)) == ["For Vim version 9.0.", "See :help and here:",
                                                   "After the example."]
    assert [bc.keep_paragraph(p) for p in ("two words", "+--+--+ |  | 12 34 56", "three real words")] \
        == [False, False, True]
    assert bc.dictd_number("B") == 1 and bc.dictd_number("BA") == 64


def test_build_corpus_never_replaces_a_folder_it_did_not_make(tmp_path, capsys):
    bc = _bench_module("build_corpus")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert bc.main(["--out", str(tmp_path / "mine"), "--work", str(tmp_path / "work"), "--only", "devil"]) == 2
    assert "is not a corpus this script built" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and not (tmp_path / "work").exists()


def test_probe_scores_a_signal_above_noise():
    """The linear probe finds a label carried by one feature among noise, and is near chance on noise alone."""
    probe = _bench_module("probe")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 16, generator=gen), torch.randint(0, 3, (400,), generator=gen)
    signal = x.clone()
    signal[:, 0] += 6.0 * y  # three classes 6 sd apart along one axis
    assert probe.probe(signal[:300], y[:300], signal[300:], y[300:])["accuracy"] > 0.95
    assert probe.probe(x[:300], y[:300], x[300:], y[300:])["accuracy"] < 0.55


def test_probe_reads_a_pretraining_checkpoint_as_the_model_folder_it_became(pretrained_model):
    """A checkpoint's encoder (the discriminator, its embedding tied to the generator's) gives the features of the
    model folder saved at the same step; random init gives others."""
    probe = _bench_module("probe")
    checkpoint = sorted((pretrained_model.parent / "checkpoints").glob("step_*"))[-1]
    texts = ["the address to the congress", "a second, longer text about the state of the union"]
    folder, tokenizer = probe.load_encoder(pretrained_model, None, None)
    from_checkpoint, _ = probe.load_encoder(checkpoint, pretrained_model, None)
    random_init, _ = probe.load_encoder(pretrained_model, None, 0)
    want = probe.features(folder, tokenizer, texts, 32)
    got = probe.features(from_checkpoint, tokenizer, texts, 32)
    assert all(torch.equal(want[p], got[p]) for p in probe.POOLINGS)
    assert not torch.allclose(want["mean"], probe.features(random_init, tokenizer, texts, 32)["mean"])


def test_anisotropy_tells_parallel_vectors_from_spread_ones():
    """Texts that all map near one direction read as mean cosine ~1 with a small spread; independent random vectors
    as mean cosine ~0 with a spread far above the mean vector."""
    anisotropy = _bench_module("anisotropy").anisotropy
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(200, 64, generator=gen)
    shared = anisotropy(torch.ones(64) * 5.0 + 0.1 * noise)
    spread = anisotropy(noise)
    assert shared["mean_cosine"] > 0.99 and shared["spread_over_mean"] < 0.05
    assert abs(spread["mean_cosine"]) < 0.05 and spread["spread_over_mean"] > 5


def test_centred_head_wrapper_fine_tunes_through_the_command_line(tmp_path, pretrained_model):
    """bench/centred_head.py runs `electra-kit finetune` unchanged but for the head: the kept model's head carries
    the standardising layer's running statistics, moved off their initial values by training."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "ft"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "centred_head.py"), "finetune", "--model", str(pretrained_model),
         "--train", str(ROOT / "tests" / "data" / "trec_slice.tsv"), "--eval",
         str(ROOT / "tests" / "data" / "trec_slice.tsv"), "--text-column", "text", "--label-column",
         "label", "--epochs", "1", "--max-seq-len", "32", "--no-progress", "--no-tracking", "--run-dir",
         str(run_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    head = load_file(str(run_dir / "model" / "classifier_head.safetensors"))
    assert head["norm.num_batches_tracked"].item() > 0
    assert not torch.equal(head["norm.running_mean"], torch.zeros_like(head["norm.running_mean"]))
    assert json.loads((run_dir / "results.json").read_text())["seeds"][0]["metrics"]["accuracy"] >= 0
