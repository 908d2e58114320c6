"""CPU threading defaults (electra_kit/threads.py): passive OpenMP wait and an idle-core thread count."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from electra_kit import threads


def test_default_threads_leaves_busy_cores_to_their_owners():
    cores = threads.available_cores()
    assert threads.default_threads(load=0.0) == cores
    assert threads.default_threads(load=float(cores)) == 1  # a fully loaded machine still gets one
    assert threads.default_threads(load=cores + 5.0) == 1
    if cores >= 2:
        assert threads.default_threads(load=1.0) == cores - 1


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measures /proc/stat (Linux)")
def test_a_process_spinning_beside_us_counts_as_a_busy_core():
    """Measured now, not the load average (which trails by a minute): a spinning child is seen at once."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads.busy_cores(0.5) >= 0.7
        if threads.available_cores() == 2:
            assert threads.default_threads() == 1
    finally:
        spinner.kill()
        spinner.wait()


def test_configure_threads_prefers_explicit_then_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.configure_threads(None) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(threads, "default_threads", lambda: 1)
        assert threads.configure_threads(None) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_configure_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="train.threads"):
        threads.configure_threads(bad)


def _policy_seen_by_a_fresh_interpreter(env_policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = "import electra_kit, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()


def test_importing_electra_kit_asks_for_a_passive_wait_before_torch_loads():
    policy, _ = _policy_seen_by_a_fresh_interpreter(None)
    assert policy == "PASSIVE"


def test_a_wait_policy_the_user_set_is_kept():
    policy, _ = _policy_seen_by_a_fresh_interpreter("ACTIVE")
    assert policy == "ACTIVE"


def test_finetune_threads_reach_the_training_loop():
    """--threads is applied by the one loop (Trainer), not overridden there by the default."""
    from electra_kit.finetune.runner import FinetuneConfig, _train_config

    train_cfg, _ = _train_config(FinetuneConfig(threads=1, progress=False), seed=0, n_train=64)
    assert train_cfg.threads == 1
    assert _train_config(FinetuneConfig(progress=False), seed=0, n_train=64)[0].threads is None
