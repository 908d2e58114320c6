"""The training loop, for pretraining and fine-tuning alike: step, accumulate, clip, schedule,
evaluate, checkpoint.

The trainer knows the :mod:`~electra_kit.objectives.base` interface only: ``forward(input_ids,
attention_mask, return_output=True, noise=..., **other batch fields)`` returns an output with
``.loss``, ``.loss_terms`` and ``.metrics()``, and ``evaluate(batches)`` gives the eval metrics.
Each step's randomness (masking, sampling, dropout) is seeded from ``(seed, step, rank)``, so a
resumed run repeats the uninterrupted one exactly. ``on_eval(step, metrics) -> bool`` may stop
the run after an evaluation (early stopping).
"""

from __future__ import annotations

import math
import signal
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from ..console import phase
from ..objectives.metrics import MeanAccumulator
from ..objectives.noise import Noise
from ..rundir import checkpoint as ckpt
from ..rundir.journal import JOURNAL, Journal
from ..threads import configure_threads
from .bad_steps import BadSteps, NonFiniteError  # noqa: F401 - NonFiniteError: raised through fit()
from .distributed import DistContext, unwrap
from .optim import make_optimizer, param_groups, warmup_linear_decay
from .progress import Progress
from .settings import TrainConfig, compile_wanted, native_bf16


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written before raising."""

    def __init__(self, signum: int, checkpoint: Path | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint: {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63)


class Trainer:
    """The one training loop, for pretraining and fine-tuning: ``fit`` runs ``cfg.steps`` optimizer steps of
    ``train_batches`` (accumulation, clipping, the schedule, skipped non-finite steps), evaluates on
    ``eval_batches()`` every ``cfg.eval_every`` steps, checkpoints (rank 0) every ``cfg.checkpoint_every``, and
    appends every logged value to ``journal`` (rank 0's ``run_dir/metrics.jsonl`` by default). ``resume(path)``
    continues from a checkpoint; ``history`` keeps what was logged. ``stateful``: more objects whose
    ``state_dict()`` every checkpoint carries and ``resume`` gives back through ``load_state_dict`` (fine-tuning's
    best epoch so far), so a resumed run holds what the killed one knew."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        train_batches: Iterator[dict],
        eval_batches: Callable[[], Iterable[dict]] | None,
        run_dir: Path,
        device: torch.device,
        dist: DistContext | None = None,
        journal: Journal | None = None,
        operative_config: str = "",
        extra_state: dict | None = None,
        on_eval: Callable[[int, dict], bool] | None = None,
        progress_desc: str = "train",
        checkpoint_files: dict[str, str] | None = None,
        pace_advice: Callable[[float, int], str | None] | None = None,
        stateful: dict[str, object] | None = None,
    ):
        self.cfg, self.device, self.dist = cfg, device, dist or DistContext()
        if device.type == "cpu":
            self.threads = configure_threads(cfg.threads)
        self.raw_model = model.to(device)
        self.eager_model = self.dist.wrap(self.raw_model, device)
        # torch.compile works lazily: its failures (no C++ compiler, an unsupported op) surface in the first
        # step, which then falls back to eager (_compile_unproven)
        self.compiled = self._compile_unproven = compile_wanted(cfg, unwrap(self.raw_model))
        self.model = torch.compile(self.eager_model) if self.compiled else self.eager_model
        groups = param_groups(self.raw_model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
        self.optimizer = make_optimizer(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, device=device)
        self.schedule = warmup_linear_decay(self.optimizer, steps=cfg.steps, warmup=cfg.effective_warmup)
        self.on_eval, self.progress_desc = on_eval, progress_desc
        # (seconds per step, steps to go) -> a line of advice after the expected length, or None
        self.pace_advice = pace_advice
        self.eval_batch_count = 0  # batches in the last evaluation
        self.train_batches, self.eval_batches = train_batches, eval_batches
        self.run_dir = Path(run_dir)
        # rank 0 journals every logged value to the run directory, whatever tracks the run (its sinks hear of it)
        self.journal = journal if journal is not None or not self.dist.is_main else Journal(self.run_dir / JOURNAL)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.operative_config = operative_config
        self.extra_state = extra_state or {}
        self.checkpoint_files = checkpoint_files or {}  # carried in every checkpoint (the tokenizer)
        self.stateful = stateful or {}
        self.step, self.tokens_seen = 0, 0
        self.bad_steps = BadSteps(cfg.max_bad_steps, self.device, self.ckpt_dir)
        self.history: list[dict] = []  # logged metrics, for the caller's summary
        self.window = MeanAccumulator()  # the training metrics since the last log
        self._signal: int | None = None
        self.noise_generator = torch.Generator(device=device)  # masking/sampling: seeded alike on every rank
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16(device))
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

    # ---- state ----------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def save(self, final: bool = False) -> Path | None:
        """Write a checkpoint (rank 0). A failed periodic write (disk full, ...) is a warning: the
        previous checkpoint stays the latest good one and training goes on; a failed final write
        is an error."""
        try:
            return self._save()
        except OSError as exc:  # only rank 0 writes, so only rank 0 gets here
            good = ckpt.latest_valid_checkpoint(self.ckpt_dir)
            message = (f"checkpoint at step {self.step} could not be written to {self.ckpt_dir} "
                       f"({exc.strerror or exc}); the last good checkpoint is {good or 'none'}")
            if final:
                self.dist.barrier()
                raise ckpt.CheckpointError(message + ": free space and continue with --resume") from exc
            warnings.warn(f"electra-kit: {message}; training continues", RuntimeWarning, stacklevel=2)
            self.dist.barrier()
            return good

    def _save(self) -> Path:
        model_state = self.dist.model_state(self.raw_model)  # collective under FSDP
        optimizer_state = self.dist.optimizer_state(self.raw_model, self.optimizer)
        window = self._window_state()  # collective when data-parallel
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        torch_state = {"optimizer": optimizer_state}  # the schedule is a function of the step: not stored
        if self.stateful:
            torch_state["stateful"] = {name: obj.state_dict() for name, obj in self.stateful.items()}
        trainer_state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "data": self.train_batches.state_dict(),
            "world_size": self.dist.world_size,
            "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
            "log_window": window,
            **self.extra_state,
        }
        path = ckpt.save_checkpoint(
            self.ckpt_dir, self.step, model_state=model_state, torch_state=torch_state,
            trainer_state=trainer_state, operative_config=self.operative_config, keep=self.cfg.keep_checkpoints,
            files=self.checkpoint_files,
        )
        self.dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        model_state, torch_state, trainer_state = ckpt.load_checkpoint(path)
        ckpt.check_fits(path, model_state, self.raw_model)
        self.dist.load_model_state(self.raw_model, model_state)
        self.dist.load_optimizer_state(self.raw_model, self.optimizer, torch_state["optimizer"])
        self.step, self.tokens_seen = trainer_state["step"], trainer_state.get("tokens_seen", 0)
        # the schedule of this run's train.steps at the checkpoint's step (a resume may lengthen the run)
        self.schedule = warmup_linear_decay(self.optimizer, steps=self.cfg.steps, warmup=self.cfg.effective_warmup,
                                            start=self.step)
        self.train_batches.load_state_dict(trainer_state["data"])
        self._load_window(trainer_state.get("log_window"))
        for name, obj in self.stateful.items():
            saved = torch_state.get("stateful", {})
            if name not in saved:
                raise ckpt.CheckpointError(f"checkpoint {path} has no state for {name!r}: it was written by another "
                                           f"kind of run")
            obj.load_state_dict(saved[name])

    def _window_state(self) -> dict:
        """The training metrics summed since the last log, so a run stopped between two logs logs, once resumed,
        the means it would have logged (exactly, on one process; the ranks' mean sums when data-parallel)."""
        keys = sorted(self.window.sums)
        sums = self._rank_mean({k: float(self.window.sums[k]) for k in keys}) if keys else {}
        return {"sums": sums, "weights": {k: self.window.weights[k] for k in keys}}

    def _load_window(self, state: dict | None) -> None:
        self.window = MeanAccumulator()
        for key, total in (state or {}).get("sums", {}).items():
            self.window.sums[key] = torch.tensor(total, dtype=torch.float32, device=self.device)
            self.window.weights[key] = state["weights"][key]

    def release(self) -> None:
        """Drop the data-parallel wrapper (its reducer holds the process group)."""
        import gc

        self.model = self.eager_model = self.raw_model
        gc.collect()

    # ---- the loop -------------------------------------------------------------------------------

    def _on_signal(self, signum, _frame):
        if self._signal is not None:  # a second Ctrl-C: the checkpoint is being written, say so once more
            print("electra-kit: already stopping: finishing the step and writing a checkpoint", file=sys.stderr)
            return
        self._signal = signum

    def fit(self) -> dict:
        """Train to ``cfg.steps`` (or until ``on_eval`` says stop); returns ``{step, tokens_seen, checkpoint}``.
        SIGTERM/SIGINT finish the step, write a checkpoint and raise :class:`Interrupted`."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._fit()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _fit(self) -> dict:
        cfg = self.cfg
        progress = Progress(step=self.step, total=cfg.steps, desc=self.progress_desc, speaking=self.dist.is_main,
                            enabled=cfg.progress and self.dist.is_main, advice=self.pace_advice)
        window_tokens, window_start = 0, time.perf_counter()  # the speed: of this process's steps only
        last_ckpt, saved_step = None, None
        while self.step < cfg.steps:
            step_start = time.perf_counter()
            metrics, tokens = self._train_step()
            self.window.add(metrics)
            window_tokens += tokens
            self.step += 1
            seconds = time.perf_counter() - step_start
            progress.step_done(metrics, tokens * self.dist.world_size / max(seconds, 1e-9), seconds)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.bad_steps.check(self.step)
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                logged = {f"train/{k}": v for k, v in self._rank_mean(self.window.result()).items()}  # one sync per log
                logged["train/lr"] = self.schedule.get_last_lr()[0]
                logged["train/tokens_per_s"] = window_tokens * self.dist.world_size / elapsed
                self._log(logged, progress)
                self.window, window_tokens, window_start = MeanAccumulator(), 0, time.perf_counter()
            stop = self._maybe_evaluate(progress) if self.step % cfg.eval_every == 0 or self.step == cfg.steps else False
            if self.step % cfg.checkpoint_every == 0:
                self.bad_steps.check(self.step)  # never a checkpoint after too many bad steps in a row
                # the run's last checkpoint is final: if it cannot be written, the run says so rather than ending without
                last_ckpt, saved_step = self.save(final=stop or self.step >= cfg.steps), self.step
            if self.dist.any_true(self._signal is not None, self.device):
                path = self.save(final=True)
                raise Interrupted(self._signal or signal.SIGTERM, path)
            if stop:
                break
        progress.close()
        if saved_step != self.step:  # the same decision on every rank: save() has a barrier
            with phase(f"writing the checkpoint of step {self.step}", progress.bar is not None):
                last_ckpt = self.save(final=True)
        return {"step": self.step, "tokens_seen": self.tokens_seen, "checkpoint": last_ckpt}

    def _maybe_evaluate(self, progress: Progress) -> bool:
        """Evaluate (where this rank does) and log it; True when ``on_eval`` says stop, decided alike on every rank."""
        stop = False
        if self.eval_batches is not None:
            with phase(f"evaluating at step {self.step}", progress.bar is not None, say=progress.say) as said:
                metrics = self.evaluate()
                n = self.eval_batch_count
                said["note"] = f"{n} batch{'' if n == 1 else 'es'}"
            self._log({f"eval/{k}": v for k, v in metrics.items()}, None)
            stop = self.on_eval is not None and bool(self.on_eval(self.step, metrics))
        if self.on_eval is not None:
            stop = self.dist.any_true(stop, self.device)
        return stop

    def _forward_backward(self, batches: list[dict]) -> dict[str, torch.Tensor]:
        """Gradients of one optimizer step's micro-batches; returns their averaged metrics (0-d tensors)."""
        cfg = self.cfg
        torch.manual_seed(step_seed(cfg.seed, self.step, self.dist.rank))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(batches):
            ids = batch["input_ids"].to(self.device, non_blocking=True)
            mask = batch["attention_mask"].to(self.device, non_blocking=True)
            fields = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()
                      if k not in ("input_ids", "attention_mask")}  # e.g. fine-tuning's labels
            self.noise_generator.manual_seed(step_seed(cfg.seed, self.step * cfg.grad_accum_steps + micro, 0))
            noise = Noise(self.noise_generator, self.dist.rank, self.dist.world_size)
            last = micro == cfg.grad_accum_steps - 1
            with self.dist.no_sync(self.model, skip=not last), self._autocast():
                out = self.model(ids, mask, return_output=True, noise=noise, **fields)
                loss, loss_value = self._global_loss(out)
                (loss / cfg.grad_accum_steps).backward()
            metrics = {**out.metrics(), "loss": loss_value}
            for k, v in metrics.items():
                v = v.detach().float() / cfg.grad_accum_steps
                totals[k] = totals[k] + v if k in totals else v
        return totals

    def _train_step(self) -> tuple[dict[str, torch.Tensor], int]:
        cfg = self.cfg
        batches = [next(self.train_batches) for _ in range(cfg.grad_accum_steps)]
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)  # counted on the host copy: no device sync
        try:
            totals = self._forward_backward(batches)
        except Exception as exc:
            if not self._compile_unproven:
                raise
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
            warnings.warn(f"train.compile: torch.compile failed in the first step ({type(exc).__name__}: {reason}); "
                          "training without it (set train.compile = False to skip the attempt)", RuntimeWarning,
                          stacklevel=2)
            self.model, self.compiled = self.eager_model, False
            totals = self._forward_backward(batches)  # the same batches and seeds: as if never compiled
        self._compile_unproven = False
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.max_grad_norm)
        sharded = hasattr(grad_norm, "full_tensor")  # FSDP: a DTensor norm, DTensor parameters
        if sharded:
            grad_norm = grad_norm.full_tensor()
        finite = torch.isfinite(grad_norm) & torch.isfinite(totals["loss"])
        fused = bool(getattr(self.optimizer, "defaults", {}).get("fused")) and not sharded
        self.bad_steps.step(self.optimizer, finite, fused=fused, step=self.step, loss=totals["loss"],
                            grad_norm=grad_norm)
        self.schedule.step()
        self.tokens_seen += tokens * self.dist.world_size
        totals["grad_norm"] = grad_norm.detach().float()
        return totals, tokens

    def _global_loss(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to differentiate, and its value over the whole (all-rank) batch.

        Data-parallel: each token-mean term is divided by its token count summed over ranks (and
        multiplied by world_size, as DDP averages gradients), not by this rank's own count, so the
        gradient equals one process's over the whole batch.
        """
        terms = getattr(out, "loss_terms", None)
        if not self.dist.enabled or not terms:
            return out.loss, out.loss.detach()
        n = len(terms)
        local = torch.stack([c.detach().float() for _, _, c in terms] + [t.detach().float() for _, t, _ in terms])
        summed = self.dist.all_reduce_sum(local)  # (2n,): counts, then sums
        counts, sums = summed[:n], summed[n:]
        loss = sum(w * total / counts[i] for i, (w, total, _) in enumerate(terms)) * self.dist.world_size
        value = sum(w * sums[i] / counts[i] for i, (w, _, _) in enumerate(terms))
        return loss, value

    def evaluate(self) -> dict[str, float]:
        """In fp32 whatever the training precision: the precision a saved model is loaded in, so what a run reports
        is what its model folder gives (``electra-kit predict`` reproduces a fine-tuning run's accuracy)."""
        self.model.eval()
        torch.manual_seed(step_seed(self.cfg.seed, 0, 0))  # the same masks at every evaluation
        with torch.no_grad():
            result = unwrap(self.raw_model).evaluate(self._counted(self.eval_batches()))
        self.model.train()
        return result

    def _counted(self, batches: Iterable[dict]) -> Iterator[dict]:
        self.eval_batch_count = 0
        for batch in batches:
            self.eval_batch_count += 1
            yield batch

    def _rank_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        if not self.dist.enabled:
            return metrics
        keys = sorted(metrics)
        values = self.dist.all_reduce_sum(torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device))
        return {k: float(v) / self.dist.world_size for k, v in zip(keys, values, strict=True)}

    def _log(self, metrics: dict[str, float], progress: Progress | None) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        self.history.append({"step": self.step, **metrics})
        if self.journal is not None:
            self.journal.append(self.step, metrics, once=True)  # a resume redoing logged steps journals them once
        if progress is not None and "train/loss" in metrics:
            progress.show({k[len("train/"):]: v for k, v in metrics.items()})
