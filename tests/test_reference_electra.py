"""bench/reference_electra.py trains the kit and the Hugging Face reference side by side, end to end
(tiny shape, a few steps), and writes its curves as JSON, a PNG and an MLflow run."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--vocab-size", "512", "--seq-len", "32", "--batch-size", "4", "--emb-dim", "16", "--disc-dim", "16",
        "--disc-depth", "1", "--disc-heads", "2", "--gen-dim", "8", "--gen-depth", "1", "--gen-heads", "1"]


def _script():
    spec = importlib.util.spec_from_file_location("reference_electra", ROOT / "bench" / "reference_electra.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_check_writes_both_curves_png_and_mlflow_run(tmp_path, small_corpus, cache_dir, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "curves.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--steps", "3", "--eval-every", "2", "--corpus", str(small_corpus), "--out-dir", str(tmp_path / "out"),
            "--json", str(out), "--tracking-uri", uri, "--kit-gin", "Electra.weight_init = 'electra'", "--paired", *TINY]
    assert _script().main(argv) == 0

    result = json.loads(out.read_text())
    assert "Electra.weight_init = 'electra'" in result["kit_bindings"]
    for side in ("kit", "reference"):
        curve = result["curves"][side]
        assert [r["step"] for r in curve] == [0, 2, 3]  # every --eval-every steps, and the last
        for record in curve:
            assert 0 < record["gen_loss"] < 2 * math.log(512)  # about ln(V) at random init
            assert 0.0 <= record["disc_auc"] <= 1.0 and 0.0 < record["replaced_fraction"] < 0.2
        assert curve[-1]["train_loss"] > 0 and curve[-1]["s_per_step"] > 0
    # both sides were evaluated on the same held-out tokens at the same masking rate
    kit, ref = result["curves"]["kit"][0], result["curves"]["reference"][0]
    assert abs(kit["replaced_fraction"] - ref["replaced_fraction"]) < 0.08
    # --paired: both generators scored on the same masked tokens, so the per-token differences average to the
    # difference of the two losses
    assert [p["step"] for p in result["paired"]] == [0, 2, 3]
    for p in result["paired"]:
        assert p["tokens"] > 0 and p["diff_se"] > 0
        assert abs(p["kit_gen_loss"] - p["ref_gen_loss"] - p["diff"]) < 1e-4
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 3 | reference |" in capsys.readouterr().out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("reference_electra").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"reference_electra", "kit", "reference"}
    assert {a.path for a in client.list_artifacts(by_name["reference_electra"].info.run_id)} == {"curves.json",
                                                                                                  "curves.png"}
    history = client.get_metric_history(by_name["reference"].info.run_id, "disc_auc")
    assert [m.step for m in history] == [0, 2, 3]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_reference_check_rejects_a_bad_kit_binding(tmp_path, small_corpus, cache_dir):
    pytest.importorskip("transformers")
    argv = ["--steps", "1", "--corpus", str(small_corpus), "--no-tracking", "--json", str(tmp_path / "r.json"),
            "--kit-gin", "Electra.no_such_knob = 1", *TINY]
    with pytest.raises(SystemExit, match="no_such_knob"):
        _script().main(argv)
