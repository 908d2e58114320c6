"""What a run says while it runs: the expected length after the first steps (and the CPU recipe's name when a
shipped GPU-sized config would take hours on a CPU), the progress bar's current values, the real number of
evaluation batches, and fine-tuning's phases and early stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from electra_kit.finetune.model import LabeledBatches, SequenceModel, eval_batches
from electra_kit.registry import create_backbone
from electra_kit.training.settings import TrainConfig
from electra_kit.training.trainer import Trainer

CPU = torch.device("cpu")


def trainer(tmp_path, *, steps: int, progress: bool, eval_rows: int = 0, **kwargs) -> Trainer:
    torch.manual_seed(0)
    backbone = create_backbone("transformer", num_tokens=40, dim=16, depth=1, heads=2, max_seq_len=8, emb_dim=16)
    rng = np.random.default_rng(0)
    rows, labels = rng.integers(5, 40, size=(32, 8)).tolist(), rng.integers(0, 3, size=32)
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup_steps=1, progress=progress, log_every=100,
                      eval_every=steps, checkpoint_every=100, precision="fp32", compile=False)
    evaluate = (lambda: eval_batches(rows[:eval_rows], labels[:eval_rows], 128, 0, CPU)) if eval_rows else None
    return Trainer(SequenceModel(backbone, 3, dropout=0.0), cfg, train_batches=LabeledBatches(rows, labels, 8, seed=0, pad_id=0),
                   eval_batches=evaluate, run_dir=tmp_path, device=CPU, **kwargs)


def test_the_expected_length_is_said_after_the_first_steps_with_the_callers_advice(tmp_path, capsys):
    asked = []

    def advice(seconds, to_go):
        asked.append((seconds, to_go))
        return "ADVICE"

    trainer(tmp_path, steps=8, progress=False, pace_advice=advice).fit()
    err = capsys.readouterr().err
    assert "expected length: 8 steps x " in err and "s/step" in err and "4 steps to go" in err
    assert err.count("expected length") == 1 and "electra-kit: ADVICE" in err
    assert len(asked) == 1 and asked[0][0] > 0 and asked[0][1] == 4  # after step 1 (untimed) and 3 timed steps


def test_the_progress_bar_shows_each_steps_values_between_log_steps(tmp_path, monkeypatch):
    from electra_kit.training import progress as progress_module

    shown = []
    monkeypatch.setattr(progress_module, "SHOW_EVERY_S", 0.0)  # every step (a host sync: at most 1/s otherwise)
    monkeypatch.setattr(progress_module.Progress, "show", lambda self, metrics: shown.append(metrics))
    t = trainer(tmp_path, steps=6, progress=True)
    t.fit()
    steps = shown[:5]  # log_every = 100: only the last step logs (and shows the window's mean after its own values)
    assert len({round(m["loss"], 6) for m in steps}) == 5, "the bar kept one step's values"
    assert all(m["tokens_per_s"] > 0 for m in steps)


def test_the_evaluation_message_counts_the_real_batches(tmp_path, capsys):
    trainer(tmp_path, steps=2, progress=True, eval_rows=5).fit()  # one batch of 5, though train.eval_batches = 10
    err = capsys.readouterr().err
    assert "evaluating at step 2 (1 batch): " in err and "10 batches" not in err


def test_a_shipped_gpu_config_that_would_take_hours_on_a_cpu_names_the_cpu_recipe(tmp_path):
    from electra_kit.config.gin_config import packaged_gin_dir
    from electra_kit.training.pretrain import _cpu_advice

    small = [packaged_gin_dir() / "base.gin", packaged_gin_dir() / "reformer_small.gin"]
    line = _cpu_advice(small, CPU)(2.0, 1_000_000)
    assert "reformer_small.gin" in line and "electra_cpu.gin" in line and "days" in line
    assert _cpu_advice(small, CPU)(0.5, 100) is None  # minutes: nothing to say
    assert _cpu_advice(small, torch.device("cuda"))(2.0, 1_000_000) is None
    mine = tmp_path / "reformer_small.gin"  # not a shipped config: the user chose its size
    assert _cpu_advice([mine], CPU)(2.0, 1_000_000) is None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_corpus):
    from electra_kit import Electra
    from electra_kit.data.tokenizer import train_wordpiece
    from electra_kit.modelfolder.pretrained import save_pretrained

    tok = train_wordpiece((f.read_text() for f in sorted(small_corpus.glob("*.txt"))), vocab_size=300)
    torch.manual_seed(0)
    kw = dict(num_tokens=tok.get_vocab_size(), max_seq_len=32, emb_dim=16, heads=2, depth=1)
    model = Electra(create_backbone("transformer", dim=16, **kw), create_backbone("transformer", dim=32, **kw))
    return save_pretrained(model, tmp_path_factory.mktemp("pretrained") / "model", tokenizer=tok,
                           special_ids={"pad_id": 0}, max_seq_len=32)


def test_fine_tuning_announces_its_phases_and_its_early_stop(tmp_path, model_dir, capsys):
    from electra_kit.finetune.runner import FinetuneConfig, TaskSpec, finetune

    lines = ["text\tlabel"] + [f"{'good fine great' if i % 2 else 'bad awful poor'} words {i}\t{i % 2}" for i in range(80)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    cfg = FinetuneConfig(epochs=30, lr=1e-3, patience=1, progress=False, batch_size=16)
    (seed,) = finetune(model_dir, TaskSpec(train=str(tmp_path / "train.tsv"), eval=str(tmp_path / "train.tsv")),
                       cfg)["seeds"]
    err = capsys.readouterr().err
    for said in ("reading and tokenizing", "seed 0: loading the encoder of", "expected length: ",
                 "seed 0: evaluating epoch", "of the evaluation file (1 batch): "):
        assert said in err, said
    assert seed["stopped_early"], seed  # the separable task saturates: a tie is no improvement
    assert f"seed 0: stopped early after epoch {len(seed['epochs'])} of 30" in err
    assert f"keeping epoch {seed['selected_epoch']} (val_accuracy" in err
