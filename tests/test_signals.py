"""Signals before and during training: prompt, one line, and nothing half-made left behind."""

import signal
import subprocess
import time

from conftest import cli_argv, cli_env
from test_faults import Poisoned, make_trainer


def test_ctrl_c_during_vocabulary_training_stops_promptly_and_leaves_nothing(tmp_path):
    # the default corpus with a large vocabulary and an empty cache: training takes a while
    argv = cli_argv("run", "tiny.gin", "--no-tracking", "--gin", "VOCAB_SIZE = 30000", "--run-dir", "r")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=cli_env(ELECTRA_KIT_CACHE=str(tmp_path / "cache")),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "r" / ".electra-kit.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # into the vocabulary training
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    err = proc.communicate(timeout=120)[1]
    assert time.monotonic() - start < 15  # the Rust trainer alone would run on for tens of seconds
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert err.strip().splitlines()[-1] == ("electra-kit: stopped by SIGINT before training began: nothing was "
                                            "trained; what this run had created in r was removed")
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()
    # on a fast machine the vocabulary may be finished (and cached) before the signal lands; whatever
    # the cache holds must then be a whole tokenizer, never a half-written or half-trained one
    from tokenizers import Tokenizer

    for cached in (tmp_path / "cache").rglob("tokenizer.json"):
        assert Tokenizer.from_file(str(cached)).get_vocab_size() > 1000, f"{cached} is not a whole vocabulary"
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and ".tmp" in p.name], "no temporaries left"


def test_a_second_ctrl_c_while_stopping_prints_one_line(tmp_path, capsys):
    trainer = make_trainer(tmp_path, Poisoned([]))
    trainer._on_signal(signal.SIGINT, None)
    trainer._on_signal(signal.SIGINT, None)
    assert capsys.readouterr().err.count("already stopping") == 1
    assert trainer._signal == signal.SIGINT
