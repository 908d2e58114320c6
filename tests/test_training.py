"""The training loop's arithmetic: gradient accumulation, the learning-rate schedule (and its warmup
cap), the parameter groups, and the pruning of old checkpoints."""

import numpy as np
import pytest
import torch

from electra_kit.finetune.model import LabeledBatches, SequenceModel
from electra_kit.registry import create_backbone
from electra_kit.rundir import checkpoint as ckpt
from electra_kit.training.optim import param_groups, warmup_linear_decay, warmup_steps
from electra_kit.training.settings import TrainConfig
from electra_kit.training.trainer import Trainer

CPU = torch.device("cpu")


def classifier(seed=0) -> SequenceModel:
    torch.manual_seed(seed)
    backbone = create_backbone("transformer", num_tokens=40, dim=16, depth=2, heads=2, max_seq_len=8, emb_dim=16)
    return SequenceModel(backbone, 3, dropout=0.0)


def labeled(batch_size: int) -> LabeledBatches:
    rng = np.random.default_rng(0)
    rows = rng.integers(5, 40, size=(32, 8)).tolist()  # equal lengths: every micro-batch has as many tokens
    return LabeledBatches(rows, rng.integers(0, 3, size=32), batch_size, seed=0, pad_id=0)


def train(tmp_path, *, grad_accum_steps: int, steps: int = 3, compile=False) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tmp_path.mkdir()
    model = classifier()
    cfg = TrainConfig(steps=steps, batch_size=8, grad_accum_steps=grad_accum_steps, lr=1e-2, warmup_steps=1,
                      max_grad_norm=1e9, progress=False, checkpoint_every=100, log_every=1,
                      precision="fp32", compile=compile)  # fp32: the equalities are of the arithmetic
    trainer = Trainer(model, cfg, train_batches=labeled(8 // grad_accum_steps), eval_batches=None,
                      run_dir=tmp_path, device=CPU)
    trainer.fit()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.history


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    one, one_log = train(tmp_path / "one", grad_accum_steps=1)
    four, four_log = train(tmp_path / "four", grad_accum_steps=4)  # four micro-batches of 2 = the same 8 rows
    start = classifier().state_dict()
    assert any(not torch.equal(start[k], one[k]) for k in one), "the model must have trained"
    for key in one:
        torch.testing.assert_close(four[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # the gradient itself, not only Adam's (scale-free) step: same norm, same loss, every step
    for a, b in zip(one_log, four_log, strict=True):
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)


def test_a_compile_failure_in_the_first_step_falls_back_to_eager_with_the_same_result(tmp_path, monkeypatch):
    """torch.compile fails lazily (no C++ compiler, say): the first step warns and trains eagerly on the same
    batches and seeds, so the run ends exactly where an eager run ends."""
    eager, _ = train(tmp_path / "eager", grad_accum_steps=1)

    class FailsToCompile(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: FailsToCompile(module))
    with pytest.warns(RuntimeWarning, match="torch.compile failed in the first step"):
        fallback, _ = train(tmp_path / "fallback", grad_accum_steps=1, compile=True)
    for key in eager:
        torch.testing.assert_close(fallback[key], eager[key], rtol=0, atol=0, msg=key)


def test_compile_auto_compiles_long_runs_of_backbones_where_compiling_pays():
    from electra_kit.objectives.mlm import MaskedLM
    from electra_kit.registry import create_backbone
    from electra_kit.training.settings import COMPILE_AUTO_STEPS, compile_wanted

    def model(name):
        return MaskedLM(create_backbone(name, num_tokens=100, dim=16, depth=1, heads=2, max_seq_len=64))

    transformer, reformer = model("transformer"), model("reformer")
    long, short = TrainConfig(steps=COMPILE_AUTO_STEPS), TrainConfig(steps=COMPILE_AUTO_STEPS - 1)
    assert compile_wanted(long, transformer) and not compile_wanted(short, transformer)
    assert not compile_wanted(long, reformer)  # measured: compiling gains it nothing
    assert not compile_wanted(long)  # no model to ask: no
    assert not compile_wanted(TrainConfig(steps=10**6, compile=False), transformer)
    assert compile_wanted(TrainConfig(steps=10, compile=True), reformer)  # forced
    with pytest.raises(ValueError, match="train.compile"):
        TrainConfig(compile="yes")


def test_warmup_is_capped_at_its_fraction_of_the_steps():
    assert warmup_steps(1000, 10000, 0.1) == 100  # ELECTRA's 10k warmup in a 1k-step run: 10 %
    assert warmup_steps(1000, 50, 0.1) == 50  # under the cap: as asked
    assert warmup_steps(5, 10000, 0.1) == 1  # at least one step
    assert warmup_steps(100, 30, None) == 30  # no cap (fine-tuning gives a fraction itself)
    assert TrainConfig(steps=200, warmup_steps=10000).effective_warmup == 20
    assert TrainConfig(steps=200, warmup_steps=10000, warmup_cap=None).effective_warmup == 200


@pytest.mark.parametrize("steps,warmup", [(50, 5), (10, 1), (7, 7)])
def test_lr_schedule_is_linear_warmup_then_linear_decay_to_zero(steps, warmup):
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([p], lr=2.0)
    schedule = warmup_linear_decay(optimizer, steps=steps, warmup=warmup)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [2.0 * ((t + 1) / warmup if t < warmup else (steps - t) / (steps - warmup)) for t in range(steps)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert max(seen) == pytest.approx(2.0) and seen.index(max(seen)) == warmup - 1  # the peak ends the warmup
    if steps > warmup:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # zero after the last step


def test_the_trainer_follows_the_schedule_and_logs_it(tmp_path):
    cfg = TrainConfig(steps=20, batch_size=8, lr=1.0, warmup_steps=10000, progress=False, log_every=1,
                      checkpoint_every=100)  # warmup capped at 10 % = 2 steps
    trainer = Trainer(classifier(), cfg, train_batches=labeled(8), eval_batches=None, run_dir=tmp_path, device=CPU)
    trainer.fit()
    logged = [h["train/lr"] for h in trainer.history if "train/lr" in h]  # the lr of the step to come
    assert logged == pytest.approx([1.0] + [(20 - t) / 18 for t in range(2, 21)], abs=1e-9)


def test_layer_decay_scales_each_depth_and_weight_decay_skips_biases_and_norms():
    model = classifier()
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    for g in groups:
        assert g["lr"] == pytest.approx(0.5 ** (4 - g["depth"]))  # 2 layers: embeddings 0 ... head at L + 2 = 4
        assert g["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted({id(p) for p in model.parameters()})  # every parameter once
    plain = param_groups(model, lr=1.0, weight_decay=0.1)  # pretraining: no layers, two groups
    assert [g["weight_decay"] for g in plain] == [0.1, 0.0]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")  # nothing else in the folder is touched
    (tmp_path / "best").mkdir()
    state = {"w": torch.zeros(2)}
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, model_state=state, torch_state={}, trainer_state={"step": step},
                             operative_config="", keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000005", "step_00000004"]
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "best").is_dir()


def test_the_trainer_prunes_to_keep_checkpoints(tmp_path):
    cfg = TrainConfig(steps=10, batch_size=8, progress=False, checkpoint_every=2, keep_checkpoints=2)
    Trainer(classifier(), cfg, train_batches=labeled(8), eval_batches=None, run_dir=tmp_path, device=CPU).fit()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_00000008", "step_00000010"]


def _schedule_run(run_dir, steps, *, resume_from=None, checkpoint_every=100):
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup_steps=2, warmup_cap=None, max_grad_norm=1e9,
                      progress=False, log_every=1, checkpoint_every=checkpoint_every, precision="fp32", compile=False)
    model = classifier()
    run_dir.mkdir(exist_ok=True)
    trainer = Trainer(model, cfg, train_batches=labeled(8), eval_batches=None, run_dir=run_dir, device=CPU)
    if resume_from is not None:
        trainer.resume(resume_from)
    trainer.fit()
    lrs = {h["step"]: h["train/lr"] for h in trainer.history if "train/lr" in h}
    return lrs, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("planned, resumed", [(8, 16), (16, 12)])
def test_a_resume_follows_the_schedule_of_its_new_length(tmp_path, planned, resumed):
    """Issue 26.1: a run trained to step 8 and resumed with another train.steps (longer than planned, or shorter
    than planned but beyond what is trained) steps at the lr of an uninterrupted run of the new length, and its
    weights move; the old schedule's length (lr 0 after step 8 for a run planned to end there) is not carried
    over. (The weights differ from the uninterrupted run's: steps 1-8 had the first length's decay.)"""
    _schedule_run(tmp_path / "first", planned, checkpoint_every=8)
    checkpoint = tmp_path / "first" / "checkpoints" / "step_00000008"
    lrs, weights = _schedule_run(tmp_path / "first", resumed, resume_from=checkpoint)
    straight_lrs, _ = _schedule_run(tmp_path / "straight", resumed)
    assert lrs == {s: straight_lrs[s] for s in range(9, resumed + 1)}
    assert lrs[9] > 0 and lrs[resumed] == 0.0
    at_8 = ckpt.load_weights(checkpoint / "model.safetensors")
    assert not torch.equal(weights["head.out.weight"], at_8["head.out.weight"]), "the resumed steps must train"
