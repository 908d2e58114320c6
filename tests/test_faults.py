"""Faults a long run meets: kills, a full disk, NaNs, corrupt checkpoints. None may lose the last good state."""

import errno
import os
import random
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import cli_argv, cli_env, corpus_gin, run_cli, tiny_args
from safetensors.torch import load_file
from torch import nn

from electra_kit.data.build import BatchIterator
from electra_kit.rundir import checkpoint as ckpt
from electra_kit.training.settings import TrainConfig
from electra_kit.training.trainer import NonFiniteError, Trainer

ARGS = tiny_args()


def run_args(corpus, *args) -> list[str]:
    return ["run", *corpus_gin(corpus), *ARGS, *args]


def final_weights(run_dir, step):
    # cloned: load_file maps the file, and a test below truncates it afterwards
    path = run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"
    return {k: v.clone() for k, v in load_file(path).items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, small_corpus, cache_dir):
    args = ["--gin", "train.steps = 40", "--gin", "train.checkpoint_every = 5"]
    run_cli(*run_args(small_corpus, *args, "--run-dir", "straight"), cwd=tmp_path)
    rng = random.Random(1234)
    ckpts = tmp_path / "killed" / "checkpoints"
    kills = 0
    for _ in range(3):
        resume = ["--resume"] if ckpt.latest_valid_checkpoint(ckpts) else []
        proc = subprocess.Popen(cli_argv(*run_args(small_corpus, *args, "--run-dir", "killed", *resume)), cwd=tmp_path,
                                env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = {p.name for p in ckpts.iterdir()} if ckpts.exists() else set()
        deadline = time.time() + 120
        # wait for one new checkpoint, then kill at a random moment of the following steps
        while proc.poll() is None and time.time() < deadline:
            now = {p.name for p in ckpts.iterdir()} if ckpts.exists() else set()
            if now - before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the run finished before it could be killed; lengthen it"
    run_cli(*run_args(small_corpus, *args, "--run-dir", "killed", "--resume"), cwd=tmp_path)
    assert_same_weights(final_weights(tmp_path / "straight", 40), final_weights(tmp_path / "killed", 40))


def test_a_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, small_corpus, cache_dir,
                                                                          cli_main):
    args = ["--gin", "train.steps = 20", "--gin", "train.checkpoint_every = 10"]
    cli_main(*run_args(small_corpus, *args, "--run-dir", "r"), cwd=tmp_path, check=True)
    good = final_weights(tmp_path / "r", 20)
    latest = tmp_path / "r" / "checkpoints" / "step_00000020" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as by a crash
    with pytest.warns(RuntimeWarning, match="step_00000020 is unusable"):
        cli_main(*run_args(small_corpus, *args, "--run-dir", "r", "--resume"), cwd=tmp_path, check=True)
    assert_same_weights(good, final_weights(tmp_path / "r", 20))  # redone from step 10, bit for bit


# ---- in-process: a real Trainer around small models -----------------------------------------------


class Tokens:
    """A dataset of random token rows."""

    def __init__(self, n=64, seq=8):
        self.rows = np.random.default_rng(0).integers(5, 50, size=(n, seq))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@dataclass
class Out:
    loss: torch.Tensor

    def metrics(self):
        return {"loss": self.loss.detach()}


class Poisoned(nn.Module):
    """A tiny regression whose loss is NaN at chosen steps (counting calls)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.emb = nn.Embedding(50, 4)
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, ids, mask, return_output=True, noise=None):
        loss = self.emb(ids).pow(2).mean()
        if self.calls in self.bad_calls:
            loss = loss * float("nan")
        self.calls += 1
        return Out(loss)

    def evaluate(self, batches):
        return {}


def make_trainer(tmp_path, model, **cfg):
    config = TrainConfig(**{"steps": 10, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "progress": False,
                            "log_every": 1, **cfg})
    return Trainer(model, config, train_batches=BatchIterator(Tokens(), 4, seed=0), eval_batches=None,
                   run_dir=tmp_path, device=torch.device("cpu"))


def test_a_non_finite_step_is_skipped_with_a_warning(tmp_path):
    model = Poisoned(bad_calls={3})
    trainer = make_trainer(tmp_path, model, steps=6)
    before = {}

    original = trainer._train_step

    def spy():
        before[trainer.step] = model.emb.weight.detach().clone()
        return original()

    trainer._train_step = spy
    with pytest.warns(RuntimeWarning, match="step 3: non-finite"):
        trainer.fit()
    assert torch.equal(before[3], before[4]), "the poisoned step must not change the weights"
    assert not torch.equal(before[4], before[5]), "training goes on after it"
    assert torch.isfinite(model.emb.weight).all()


def test_fused_adamw_skips_non_finite_steps_in_the_kernel_and_reports_them_at_the_next_log(tmp_path):
    """No host sync per step: the fused kernel skips the update (found_inf); the count is read at log time."""
    model = Poisoned(bad_calls={3, 4})
    trainer = make_trainer(tmp_path, model, steps=10, log_every=5, checkpoint_every=10)
    assert trainer.optimizer.defaults["fused"], "CPU AdamW is fused since torch 2.4"
    weights = {}
    original = trainer._train_step

    def spy():
        weights[trainer.step] = model.emb.weight.detach().clone()
        return original()

    trainer._train_step = spy
    with pytest.warns(RuntimeWarning) as caught:
        trainer.fit()
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert messages == [messages[0]] and "step 4: non-finite" in messages[0] and "2 update(s) skipped" in messages[0]
    assert torch.equal(weights[3], weights[5]), "both poisoned steps leave the weights alone"
    assert not torch.equal(weights[5], weights[6]) and torch.isfinite(model.emb.weight).all()
    assert trainer.optimizer.state[model.emb.weight]["step"].item() == 8, "skipped steps don't count for Adam"


def test_too_many_non_finite_steps_stop_with_a_clear_error_and_keep_the_last_checkpoint(tmp_path):
    model = Poisoned(bad_calls=range(5, 100))
    trainer = make_trainer(tmp_path, model, max_bad_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteError, match="3 non-finite steps in a row") as info:
            trainer.fit()
    good = ckpt.latest_valid_checkpoint(tmp_path / "checkpoints")
    assert good is not None and good.name == "step_00000006" and str(good) in str(info.value)
    state = load_file(good / "model.safetensors")
    assert torch.isfinite(state["emb.weight"]).all()


def test_a_failing_checkpoint_write_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    model = nn.Linear(3, 3)
    ckpt.save_checkpoint(tmp_path, 1, model_state=model.state_dict(), torch_state={}, trainer_state={"step": 1},
                         operative_config="")

    real_save = ckpt.save_file

    def disk_full(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # a partial file, then the device fills up
            f.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, 2, model_state=model.state_dict(), torch_state={}, trainer_state={"step": 2},
                             operative_config="")
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"], "no half-written checkpoint is left"
    latest = ckpt.latest_valid_checkpoint(tmp_path)
    assert latest.name == "step_00000001"
    state, _, _ = ckpt.load_checkpoint(latest)
    assert not torch.equal(state["weight"], model.weight)


def test_trainer_warns_and_goes_on_when_a_periodic_checkpoint_cannot_be_written(tmp_path, monkeypatch):
    model = Poisoned(bad_calls=())
    trainer = make_trainer(tmp_path, model, steps=6, checkpoint_every=2)
    real = ckpt.save_checkpoint

    def fail_at_step_4(ckpt_dir, step, **kw):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(ckpt_dir, step, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", fail_at_step_4)
    with pytest.warns(RuntimeWarning, match="step 4 could not be written.*step_00000002.*training continues"):
        result = trainer.fit()
    assert result["step"] == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000006"]


def test_a_checkpoint_missing_its_manifest_is_skipped(tmp_path):
    model = nn.Linear(2, 2)
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, model_state=model.state_dict(), torch_state={}, trainer_state={},
                             operative_config="")
    (tmp_path / "step_00000002" / "manifest.json").unlink()
    with pytest.warns(RuntimeWarning, match="step_00000002.*no manifest"):
        assert ckpt.latest_valid_checkpoint(tmp_path).name == "step_00000001"


def test_checkpoint_state_loads_with_weights_only(tmp_path):
    """No pickle from a user-given path: the torch part of a checkpoint loads with weights_only=True."""
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    path = ckpt.save_checkpoint(tmp_path, 1, model_state=model.state_dict(), torch_state={"optimizer": opt.state_dict()},
                                trainer_state={}, operative_config="")
    torch.load(path / "state.pt", weights_only=True)
    shutil.rmtree(path)
