"""Property: a writer SIGKILLed at a random instant never leaves less than the last complete result.

For checkpoints, model folders and exports alike, a forked writer (cheap: no new interpreter)
rewrites its target in a loop, reporting each completed write down a pipe; the test kills it at
a random moment, then checks that what a reader finds is whole and is either the last completed
write or the one that was in flight, and that no finished model was deleted.
"""

import os
import random
import signal
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from electra_kit.modelfolder.export import export
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained
from electra_kit.registry import create_backbone
from electra_kit.rundir import checkpoint as ckpt

KILLS = 10


def filled_electra(value: float):
    from electra_kit.objectives.electra import Electra

    spec = dict(num_tokens=64, dim=64, depth=2, heads=2, max_seq_len=32)
    model = Electra(create_backbone("transformer", **spec), create_backbone("transformer", **spec))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def first_value(model_dir) -> float:
    return float(next(iter(load_file(model_dir / "encoder.safetensors").values())).flatten()[0])


def kill_during(write, rng: random.Random, max_delay: float) -> list[int]:
    """Fork a child calling ``write(i)`` for i = 1, 2, ... and SIGKILL it; return the i that completed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        os.close(read_end)
        try:
            for i in range(1, 10_000):
                write(i)
                os.write(write_end, f"{i}\n".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    time.sleep(rng.uniform(0, max_delay))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        return [int(x) for x in f.read().split()]


def in_flight_or_done(found: int, done: list[int], previous: int | None) -> bool:
    last = done[-1] if done else previous
    return found in {last, (last or 0) + 1} or (last is None and found is None)


@pytest.fixture
def rng():
    return random.Random(int(os.environ.get("KILL_SEED", "12345")))


def test_a_checkpoint_write_killed_at_random_leaves_the_last_complete_one(tmp_path, rng):
    state = {"w": torch.zeros(512, 512)}  # 1 MB: a write takes long enough to be hit
    step = [0]

    def write(i):
        step[0] += 1
        state["w"].fill_(step[0])
        ckpt.save_checkpoint(tmp_path, step[0], model_state=state, torch_state={"opt": torch.ones(3)},
                             trainer_state={"step": step[0]}, operative_config="x = 1", files={"tokenizer.json": "{}"})

    last = None
    for _ in range(KILLS):
        step[0] = last or 0  # the next child continues from the last intact checkpoint, as --resume does
        done = kill_during(write, rng, 0.4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            found = ckpt.latest_valid_checkpoint(tmp_path)
        found_step = int(found.name[len(ckpt.PREFIX):]) if found else None
        expect = [(last or 0) + d for d in done]
        assert in_flight_or_done(found_step, expect, last), (found_step, expect, last)
        if found is not None:
            model_state, _, trainer_state = ckpt.load_checkpoint(found)
            assert trainer_state["step"] == found_step and float(model_state["w"][0, 0]) == found_step
        last = found_step


def test_a_model_save_killed_at_random_leaves_a_whole_model_folder(tmp_path, rng):
    models = {v: filled_electra(float(v)) for v in (1, 2, 3, 4)}
    folder = tmp_path / "model"
    save_pretrained(models[1], folder)
    last = 1

    def write(i):
        save_pretrained(models[(last + i - 1) % 4 + 1], folder)

    for _ in range(KILLS):
        done = kill_during(write, rng, 0.3)
        value = first_value(folder)
        versions = [(last + i - 1) % 4 + 1 for i in done]
        in_flight = (last + len(done)) % 4 + 1
        assert value in {float(versions[-1] if versions else last), float(in_flight)}, (value, versions, last)
        load_pretrained(folder)  # whole: every file there and readable
        last = int(value)
    save_pretrained(models[1], folder)  # the next writer clears what killed writers left behind
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_export_killed_at_random_never_loses_the_model_or_the_last_export(tmp_path, rng):
    sources = {v: save_pretrained(filled_electra(float(v)), tmp_path / f"run{v}" / "model") for v in (1, 2)}
    (tmp_path / "run1" / "checkpoints").mkdir()
    before = {v: {p.name: p.read_bytes() for p in s.iterdir()} for v, s in sources.items()}
    out = tmp_path / "exported"
    export(sources[1], out, format="portable")
    last = 1

    def write(i):
        export(sources[(last + i - 1) % 2 + 1], out, format="portable", overwrite=True)

    for _ in range(KILLS):
        done = kill_during(write, rng, 0.3)
        value = first_value(out)
        versions = [(last + i - 1) % 2 + 1 for i in done]
        in_flight = (last + len(done)) % 2 + 1
        assert value in {float(versions[-1] if versions else last), float(in_flight)}
        load_pretrained(out)
        for v, s in sources.items():  # the finished models are never touched
            assert {p.name: p.read_bytes() for p in s.iterdir()} == before[v]
        last = int(value)
    export(sources[1], out, format="portable", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run1", "run2"]
