"""`electra-kit finetune --resume`: a fine-tuning run stopped by a signal or killed outright loses nothing it
finished. The resumed run ends with the results, the kept model and (tracked) the one MLflow run that the same run
never stopped would have; a resume that would change what the run was asked is refused, naming the flag.

Real runs of the command on the tiny pretrained model of conftest; fine-tuning on CPU is deterministic, so
"the same results" is equality, not closeness.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_argv, cli_env, error_lines, run_cli, trec_split
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, Path]:
    return trec_split(tmp_path_factory.mktemp("trec"))


@pytest.fixture(scope="module")
def args(pretrained_model, task) -> list[str]:
    """Two seeds of six epochs (7 steps each): long enough to be stopped in the middle of."""
    train, evalf = task
    return ["finetune", "--model", str(pretrained_model), "--train", str(train), "--eval", str(evalf),
            "--seeds", "2", "--epochs", "6", "--no-progress"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, args) -> Path:
    """The run never stopped: what a resumed one must end with."""
    root = tmp_path_factory.mktemp("straight")
    run_cli(*args, "--no-tracking", "--run-dir", "run", cwd=root)
    return root / "run"


def started(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_argv(*argv), cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, path_glob: tuple[Path, str], timeout: float = 240) -> None:
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while proc.poll() is None and not list(folder.glob(pattern)) and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"


def same_results(run: Path, straight: Path) -> None:
    a, b = (json.loads((r / "results.json").read_text()) for r in (run, straight))
    assert [s["metrics"] for s in a["seeds"]] == [s["metrics"] for s in b["seeds"]]
    assert [s["epochs"] for s in a["seeds"]] == [s["epochs"] for s in b["seeds"]]  # train losses included
    assert [s["selected_epoch"] for s in a["seeds"]] == [s["selected_epoch"] for s in b["seeds"]]
    assert a["median"] == b["median"] and a["kept_model"]["seed"] == b["kept_model"]["seed"]
    for name in ("encoder.safetensors", "classifier_head.safetensors"):
        x, y = load_file(run / "model" / name), load_file(straight / "model" / name)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def test_sigterm_in_a_seed_then_the_continue_line_ends_as_the_run_never_stopped_and_tracks_one_run(
        tmp_path, args, straight):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    proc = started([*args, "--tracking-uri", store, "--run-dir", "stopped"], tmp_path)
    wait_for(proc, (tmp_path / "stopped" / "seed_0" / "checkpoints", "step_*"))  # after its first epoch
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert not (tmp_path / "stopped" / "seed_0" / "result.json").exists()  # stopped inside seed 0
    line = next(x for x in err.splitlines() if "Continue with: " in x).split("Continue with: ", 1)[1]
    argv = shlex.split(line)
    assert argv[:2] == ["electra-kit", "finetune"] and argv[-1] == "--resume"

    resumed = run_cli(*argv[1:], cwd=tmp_path)
    assert "seed 0: continuing from step" in resumed.stderr
    same_results(tmp_path / "stopped", straight)

    from mlflow import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "seed_0/val/accuracy")]
    assert sorted(set(steps)) == [7 * e for e in range(1, 7)]  # every epoch, before and after the stop


def test_a_run_killed_after_its_first_seed_keeps_it_and_trains_only_the_next(tmp_path, args, straight):
    proc = started([*args, "--no-tracking", "--run-dir", "killed"], tmp_path)
    wait_for(proc, (tmp_path / "killed", "model/config.json"))  # seed 0 done and kept at once
    proc.kill()  # SIGKILL: no handler, no last checkpoint
    proc.wait(timeout=60)
    assert (tmp_path / "killed" / "seed_0" / "result.json").is_file()
    assert not (tmp_path / "killed" / "results.json").exists()

    again = run_cli(*args, "--no-tracking", "--run-dir", "killed", cwd=tmp_path, check=False)
    assert again.returncode == 2 and "--resume" in error_lines(again.stderr), again.stderr[-2000:]
    resumed = run_cli(*args, "--no-tracking", "--run-dir", "killed", "--resume", cwd=tmp_path)
    assert "seed 0: finished earlier" in resumed.stderr and "seed 0: continuing" not in resumed.stderr
    same_results(tmp_path / "killed", straight)


def test_a_finished_run_resumed_with_more_seeds_trains_only_the_new_ones(tmp_path, args, straight, cli_main):
    one = [a if a != "2" else "1" for a in args]  # --seeds 1
    cli_main(*one, "--no-tracking", "--run-dir", "grown", cwd=tmp_path, check=True)
    grown = cli_main(*args, "--no-tracking", "--run-dir", "grown", "--resume", cwd=tmp_path, check=True)
    assert "seed 0: finished earlier" in grown.stderr and "seed 0: trained all" not in grown.stderr
    assert "seed 1: trained all" in grown.stderr
    same_results(tmp_path / "grown", straight)


@pytest.mark.parametrize("change, named", [
    (["--lr", "0.001"], "--lr 0.0003 (now 0.001)"),
    (["--pooling", "mean"], "--pooling cls (now mean)"),
    (["--epochs", "5"], "--epochs 6.0 (now 5.0)"),
])
def test_a_resume_that_would_change_the_recipe_is_refused_naming_the_flag(tmp_path, args, straight, cli_main,
                                                                         change, named):
    done = cli_main(*args, "--no-tracking", "--run-dir", str(straight), "--resume", *change, cwd=tmp_path)
    err = error_lines(done.stderr)
    assert done.returncode == 2 and len(err.splitlines()) == 1 and named in err, err
    assert "--seeds" in err  # what may change is said


def test_a_resume_whose_training_file_changed_is_refused_naming_it(tmp_path, args, task, cli_main):
    train = tmp_path / "train.tsv"
    train.write_text(task[0].read_text(encoding="utf-8"), encoding="utf-8")
    mine = [str(train) if a == str(task[0]) else a for a in args]
    proc = started([*mine, "--no-tracking", "--run-dir", "r"], tmp_path)
    wait_for(proc, (tmp_path / "r" / "seed_0" / "checkpoints", "step_*"))
    proc.kill()
    proc.wait(timeout=60)
    train.write_text(train.read_text(encoding="utf-8").replace("What", "Which", 1), encoding="utf-8")
    done = cli_main(*mine, "--no-tracking", "--run-dir", "r", "--resume", cwd=tmp_path)
    err = error_lines(done.stderr)
    assert done.returncode == 2 and f"--train {train}" in err and "content has changed" in err, err


def test_resume_needs_a_fine_tuning_run_to_continue(tmp_path, args, cli_main):
    done = cli_main(*args, "--no-tracking", "--resume", cwd=tmp_path)
    assert done.returncode == 2 and "--resume needs --run-dir" in done.stderr
    (tmp_path / "empty").mkdir()
    done = cli_main(*args, "--no-tracking", "--run-dir", "empty", "--resume", cwd=tmp_path)
    assert done.returncode == 2 and "nothing to resume in empty" in error_lines(done.stderr), done.stderr
    assert list((tmp_path / "empty").iterdir()) == []  # nothing claimed


def test_a_kept_model_lost_before_it_was_saved_is_rebuilt_from_its_seeds_last_checkpoint(tmp_path, args, straight,
                                                                                          cli_main):
    """A run killed between a seed's result.json and the save of its model: the resume takes the kept seed's
    weights from its last checkpoint (which carries the best epoch) and trains nothing."""
    import shutil

    shutil.copytree(straight, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "model")
    (tmp_path / "run" / "results.json").unlink()
    done = cli_main(*args, "--no-tracking", "--run-dir", "run", "--resume", cwd=tmp_path, check=True)
    assert "seed 0: its last checkpoint" in done.stderr and "nothing is trained again" in done.stderr
    assert "continuing from step" not in done.stderr
    same_results(tmp_path / "run", straight)


def test_ctrl_c_outside_training_prints_the_continue_line_too(tmp_path, args, cli_main, monkeypatch):
    """Ctrl-C while a seed is loaded, evaluated or saved (no training loop to catch it) still says how to go on."""
    from electra_kit.finetune import runner

    real = runner.finetune_seed

    def second_seed_interrupted(*a, **k):
        if a[3] == 1:  # seed 1 starts
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "finetune_seed", second_seed_interrupted)
    done = cli_main(*args, "--no-tracking", "--run-dir", "r", cwd=tmp_path)
    assert done.returncode == 130 and "Continue with: electra-kit finetune" in done.stderr, done.stderr[-2000:]
    assert done.stderr.rstrip().endswith("--run-dir r --resume")
    assert (tmp_path / "r" / "seed_0" / "result.json").is_file()
