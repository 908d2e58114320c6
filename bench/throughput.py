"""Training-step throughput of electra-kit against its peers, measured interleaved in one process.

    python bench/throughput.py                       # ELECTRA-Small shape, every backbone, both peers
    python bench/throughput.py --shape base          # ELECTRA-Base shape (seq 512)
    python bench/throughput.py --tiny --steps 2      # a seconds-long smoke run (CI); no peer is required
    python bench/throughput.py --profile kit/transformer --profile orig/transformer

What one step is, for every case: ``zero_grad`` -> forward (the objective's total loss) ->
``backward`` -> ``AdamW.step`` (fused where torch has it), on packed sequences of random ids (``[CLS] ...
[SEP]``, no padding), bf16 autocast on CUDA, fp32 on CPU (``--amp`` changes it).

Cases:

- ``kit/<backbone>``: electra-kit's ``Electra`` over two registry backbones (vocabulary logits only
  at the ``K = ceil(0.15 n)`` masked slots).
- ``orig/<backbone>``: the original ``electra-pytorch`` 0.1.2 ``Electra`` wrapped around the *same*
  modules: the same backbones with the same tied embeddings, electra-kit's ``GeneratorHead``
  applied at every position (the (b, n, V) logits it expects) and ``DiscriminatorHead`` as
  (b, n, 1). Same model, its objective code.
- ``hf``: Hugging Face ``ElectraForMaskedLM`` + ``ElectraForPreTraining`` (same sizes, embeddings
  shared, LM head tied, dropout 0 like electra-kit's configs, SDPA attention) under that same
  wrapper, as its pretraining scripts wire them.

Timing: every case is built once; then ``--rounds`` rounds each run ``--steps`` timed steps of
every case in turn (order rotated per round). tokens/s = tokens per step / median step time; each
ratio is the median over rounds of the two cases' per-round throughputs (measured minutes apart
at most, so load from other processes on a shared machine hits both).

Peak memory: one fresh subprocess per case (imports everything every case imports, then builds
only that case and runs warm-up + 2 steps). CPU: peak RSS (``getrusage`` ``ru_maxrss``) minus the
RSS just before the model was built, i.e. weights + gradients + optimizer state + activations +
allocator slack. CUDA: ``torch.cuda.max_memory_allocated``.

FLOPs per token (the same nominal model for every case; what TFLOP/s and MFU count, CUDA only):
``6 (P_g + P_d) + 12 n (L_g d_g + L_d d_d) + 6 (K / n) (d_g e + e V) + 6 (d_d^2 + d_d)``, with
``P = L (4 d^2 + 2 d f) (+ e d when e != d)`` the encoder's matmul weights, ``n`` the sequence
length, ``e`` the embedding width, ``V`` the vocabulary, ``K = ceil(0.15 n)``: forward + backward
(x3) of every matmul, dense attention scores and mixing, and the vocabulary projection at the
masked slots only (computing it elsewhere is not useful work). Peers are credited the same FLOPs
per token, so their TFLOP/s is "useful" TFLOP/s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# Before torch starts OpenMP: on a CPU shared with other processes, OpenMP's default of spinning at
# its barriers made 2 threads 8x slower than 1 on a loaded 2-core machine (a descheduled thread
# stalls its partner; bench/RESULTS.md). Every case runs under it alike; set it yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

PAD, UNK, MASK, CLS, SEP = 0, 1, 2, 3, 4
BACKBONES = ("transformer", "reformer", "performer")
ORIG_PIP = "pip install --no-deps electra-pytorch==0.1.2"
HF_PIP = "pip install -c constraints/cpu.txt -e '.[bench]'"


@dataclass(frozen=True)
class Shape:
    vocab: int
    emb: int
    d_dim: int  # discriminator: hidden, layers, heads, FFN
    d_depth: int
    d_heads: int
    d_ff: int
    g_dim: int  # generator: hidden, layers, heads, FFN
    g_depth: int
    g_heads: int
    g_ff: int
    seq: int


SHAPES = {
    # ELECTRA paper (Clark et al. 2020), Table 6; generator 1/4 (Small) and 1/3 (Base) of the width
    "small": Shape(30522, 128, 256, 12, 4, 1024, 64, 12, 1, 256, 128),
    "base": Shape(30522, 768, 768, 12, 12, 3072, 256, 12, 4, 1024, 512),
    "tiny": Shape(1000, 32, 64, 2, 2, 256, 32, 1, 1, 128, 64),
}

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched against torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = [
    ("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]


def flops_per_token(s: Shape) -> float:
    """Training FLOPs per token of the nominal model; see the module docstring."""
    k_frac = math.ceil(0.15 * s.seq) / s.seq

    def encoder(d, depth, ff):
        proj = s.emb * d if s.emb != d else 0
        return depth * (4 * d * d + 2 * d * ff) + proj

    dense = 6 * (encoder(s.g_dim, s.g_depth, s.g_ff) + encoder(s.d_dim, s.d_depth, s.d_ff))
    attention = 12 * s.seq * (s.g_depth * s.g_dim + s.d_depth * s.d_dim)
    heads = 6 * k_frac * (s.g_dim * s.emb + s.emb * s.vocab) + 6 * (s.d_dim * s.d_dim + s.d_dim)
    return dense + attention + heads


# ------------------------------------------------------------------------------------ models


def _backbone(name: str, s: Shape, role: str):
    from electra_kit import create_backbone

    if role == "generator":
        dim, depth, heads, ff = s.g_dim, s.g_depth, s.g_heads, s.g_ff
    else:
        dim, depth, heads, ff = s.d_dim, s.d_depth, s.d_heads, s.d_ff
    return create_backbone(name, num_tokens=s.vocab, dim=dim, depth=depth, heads=heads, max_seq_len=s.seq,
                           emb_dim=s.emb, ff_mult=ff // dim)


def build_kit(backbone: str, s: Shape):
    from electra_kit import Electra

    return Electra(_backbone(backbone, s, "generator"), _backbone(backbone, s, "discriminator"),
                   mask_token_id=MASK, pad_token_id=PAD, mask_ignore_token_ids=(CLS, SEP))


class FullVocabGenerator(nn.Module):
    """Backbone + electra-kit's GeneratorHead at every position: (b, n) -> (b, n, V)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, ids):
        return self.head(self.backbone(ids))  # (b, n, V)


class DiscriminatorWithHead(nn.Module):
    """Backbone + electra-kit's DiscriminatorHead: (b, n) -> (b, n, 1)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, ids):
        return self.head(self.backbone(ids))[..., None]  # (b, n, 1)


class LogitsOf(nn.Module):
    """A Hugging Face model that returns its ``.logits`` tensor, as the original wrapper wants."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits  # (b, n, V) or (b, n)


def build_orig(backbone: str, s: Shape):
    from electra_pytorch import Electra as OrigElectra

    kit = build_kit(backbone, s)  # the same modules, embeddings tied exactly as electra-kit ties them
    gen = FullVocabGenerator(kit.generator, kit.generator_head)
    disc = DiscriminatorWithHead(kit.discriminator, kit.discriminator_head)
    return OrigElectra(gen, disc, mask_token_id=MASK, pad_token_id=PAD, mask_ignore_token_ids=[CLS, SEP])


def build_hf(s: Shape):
    from electra_pytorch import Electra as OrigElectra
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    def config(dim, depth, heads, ff):
        return ElectraConfig(vocab_size=s.vocab, embedding_size=s.emb, hidden_size=dim, num_hidden_layers=depth,
                             num_attention_heads=heads, intermediate_size=ff, max_position_embeddings=max(512, s.seq),
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa")

    gen = ElectraForMaskedLM(config(s.g_dim, s.g_depth, s.g_heads, s.g_ff))
    disc = ElectraForPreTraining(config(s.d_dim, s.d_depth, s.d_heads, s.d_ff))
    gen.electra.embeddings = disc.electra.embeddings  # token, position, type embeddings and their LayerNorm
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight  # the tied LM head
    return OrigElectra(LogitsOf(gen), LogitsOf(disc), mask_token_id=MASK, pad_token_id=PAD,
                       mask_ignore_token_ids=[CLS, SEP])


def case_names(args) -> list[str]:
    names = []
    for b in args.backbones:
        names.append(f"kit/{b}")
        if args.compile:
            names.append(f"kit/{b}+compile")
        if "orig" in args.peers:
            names.append(f"orig/{b}")
    if "hf" in args.peers:
        names.append("hf")
    for extra in args.extra:
        names.append(extra)
    return names


def missing_peers(peers) -> list[str]:
    missing = []
    if peers and importlib.util.find_spec("electra_pytorch") is None:
        missing.append(f"electra-pytorch (both peers run under its wrapper; {ORIG_PIP})")
    if "hf" in peers and importlib.util.find_spec("transformers") is None:
        missing.append(f"transformers (the Hugging Face pair; {HF_PIP})")
    return missing


class Case:
    """One model + optimizer + a step function."""

    def __init__(self, name: str, s: Shape, device: torch.device, amp: str):
        self.name, self.shape, self.device = name, s, device
        torch.manual_seed(0)
        base, _, option = name.partition("+")
        family, _, backbone = base.partition("/")
        self.backbone = backbone or "hf"
        if family == "kit":
            model = build_kit(backbone, s)
            self._loss = lambda m, ids: m(ids, ids != PAD, return_output=True).loss
        elif family == "orig":
            model = build_orig(backbone, s)
            self._loss = lambda m, ids: m(ids).loss
        elif family == "hf":
            model = build_hf(s)
            self._loss = lambda m, ids: m(ids).loss
        else:
            raise SystemExit(f"unknown case {name!r}; cases look like kit/transformer, orig/reformer, hf")
        if option not in OPTIONS:
            raise SystemExit(f"unknown option +{option} in {name!r}; options: {', '.join('+' + o for o in OPTIONS if o)}")
        if option == "fullvocab":
            if family != "kit":
                raise SystemExit("+fullvocab is an ablation of electra-kit's objective: kit/<backbone>+fullvocab")
            model._generator_logits = _full_vocab_logits.__get__(model)
        self.model = model.to(device).train()
        params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
        self.n_params = sum(p.numel() for p in params)
        self.optimizer = make_optimizer(params, device)
        self.forward_model = torch.compile(self.model) if option == "compile" else self.model
        self.amp = "bf16" if option == "bf16" else amp

    def step(self, ids: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp == "bf16" else contextlib.nullcontext()
        with amp:
            loss = self._loss(self.forward_model, ids)
        loss.backward()
        self.optimizer.step()


OPTIONS = ("", "compile", "bf16", "fullvocab")


def _full_vocab_logits(self, masked, attention_mask, kwargs):
    """Ablation of electra-kit's Electra: the generator head at every position, then the K slots."""
    hidden = self.generator(masked.corrupted, attention_mask=attention_mask)  # (b, n, d_g)
    logits = self.generator_head(hidden)  # (b, n, V)
    index = masked.positions[..., None].expand(-1, -1, logits.shape[-1])  # (b, K, V)
    return logits.gather(1, index)


def make_optimizer(params, device: torch.device) -> torch.optim.Optimizer:
    """The same AdamW for every case: fused where torch has it (CUDA; CPU since torch 2.4)."""
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4)


def make_batches(s: Shape, batch: int, device: torch.device, count: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(5, s.vocab, (batch, s.seq), generator=g)  # (b, n) packed: no padding
        ids[:, 0], ids[:, -1] = CLS, SEP
        out.append(ids.to(device))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------ phases


def child_memory(args, s: Shape, device: torch.device) -> None:
    """Fresh process: imports as the parent does, builds one case, runs warm-up + 2 steps."""
    _import_for(args.child_memory)
    before = rss_bytes()
    case = Case(args.child_memory, s, device, args.amp)
    batches = make_batches(s, args.batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(max(1, args.warmup) + 2):
        case.step(batches[i % len(batches)])
    sync(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    result = {"case": case.name, "peak_rss_delta": peak - before, "peak_rss": peak, "params": case.n_params}
    if device.type == "cuda":
        result["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    print("MEMORY " + json.dumps(result), flush=True)


def _import_for(name: str) -> None:
    """Everything building case ``name`` would import, so that none of it counts as its memory."""
    import electra_kit  # noqa: F401

    family, _, backbone = name.partition("+")[0].partition("/")
    if backbone:
        importlib.import_module(f"electra_kit.backbones.{backbone}")
    if family in ("orig", "hf"):
        import electra_pytorch  # noqa: F401
    if family == "hf":
        from transformers import ElectraForMaskedLM  # noqa: F401  (the lazy module's real import)


def measure_memory(args, names: list[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), *_child_argv(args), "--child-memory", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")), None)
        if proc.returncode != 0 or line is None:
            print(f"  memory of {name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        out[name] = json.loads(line[len("MEMORY "):])
        print(f"  memory {name}: {fmt_mib(_mem_value(out[name]))}", flush=True)
    return out


def _child_argv(args) -> list[str]:
    argv = ["--shape", args.shape, "--batch", str(args.batch), "--seq", str(args.seq), "--device", args.device,
            "--amp", args.amp, "--warmup", str(args.warmup), "--threads", str(args.threads)]
    return argv


def _mem_value(m: dict) -> int:
    return m.get("cuda_peak", m["peak_rss_delta"])


def time_cases(args, cases: list[Case], batches) -> dict[str, list[list[float]]]:
    """{name: [[step seconds] per round]}, rounds interleaved across cases."""
    times = {c.name: [] for c in cases}
    for c in cases:  # warm-up (and compilation) outside the timed rounds
        t0 = time.perf_counter()
        for i in range(args.warmup):
            c.step(batches[i % len(batches)])
        sync(c.device)
        c.warmup_s = time.perf_counter() - t0
        print(f"  warm-up {c.name}: {args.warmup} steps in {c.warmup_s:.1f} s", flush=True)
    for r in range(args.rounds):
        order = cases[r % len(cases):] + cases[: r % len(cases)]
        for c in order:
            steps = []
            for i in range(args.steps):
                sync(c.device)
                t0 = time.perf_counter()
                c.step(batches[i % len(batches)])
                sync(c.device)
                steps.append(time.perf_counter() - t0)
            times[c.name].append(steps)
        line = ", ".join(f"{c.name} {args.batch * args.seq / statistics.median(times[c.name][-1]):,.0f}" for c in cases)
        print(f"  round {r + 1}/{args.rounds} tokens/s: {line}", flush=True)
    return times


def profile_case(args, case: Case, batches) -> None:
    from torch.profiler import ProfilerActivity, profile

    for i in range(max(1, args.warmup)):
        case.step(batches[i % len(batches)])
    steps = max(1, min(args.steps, 3))
    sync(case.device)
    t0 = time.perf_counter()
    for i in range(steps):
        case.step(batches[i % len(batches)])
    sync(case.device)
    wall = (time.perf_counter() - t0) / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for i in range(steps):
            case.step(batches[i % len(batches)])
        sync(case.device)
    events = prof.key_averages()
    sort = "self_cuda_time_total" if case.device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, sort) for e in events)
    vocab = sum(getattr(e, sort) for e in prof.key_averages(group_by_input_shape=True)
                if str(case.shape.vocab) in str(e.input_shapes))
    print(f"\n### profile {case.name}: {steps} steps; unprofiled wall time {1e3 * wall:.0f} ms per step; "
          f"{total / 1e3 / steps:.0f} ms op self time per step; "
          f"ops on vocabulary-sized tensors ({case.shape.vocab} in an input shape): "
          f"{vocab / 1e3 / steps:.0f} ms per step ({100 * vocab / max(total, 1):.0f}%)")
    print(events.table(sort_by=sort, row_limit=args.profile_rows))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=args.profile_rows))


def check_static(args, s: Shape, device: torch.device) -> dict:
    """Compile electra-kit's forward once per backbone; feed it batches with 0, n/4 and n/2 padding
    positions. Static shapes mean no recompilation; a host sync in the step (``.item()``,
    ``bool(tensor)``) would show as a graph break. Prints what dynamo saw."""
    import torch._dynamo as dynamo

    from electra_kit.objectives.noise import Noise

    def noise():  # as the trainer draws: from its own generator (DDP-exact masking and sampling)
        return Noise(torch.Generator(device=device).manual_seed(0))

    results = {}
    for backbone in args.backbones:
        torch.manual_seed(0)
        model = build_kit(backbone, s).to(device).train()
        ids = make_batches(s, args.batch, device, 1)[0]
        dynamo.reset()
        explained = dynamo.explain(model)(ids, ids != PAD, return_output=True, noise=noise())
        reasons = sorted({str(getattr(r, "reason", r)).splitlines()[0][:120] for r in explained.break_reasons})
        dynamo.reset()
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        recompiled = None
        with dynamo.config.patch(error_on_recompile=True):
            for pad in (0, s.seq // 4, s.seq // 2):
                x = ids.clone()
                if pad:
                    x[::2, -pad:] = PAD  # every other row padded: the valid slots change, K does not
                try:
                    compiled(x, x != PAD, return_output=True, noise=noise()).loss.backward()
                except Exception as exc:  # dynamo's RecompileError (its class moved between versions)
                    recompiled = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    break
        results[backbone] = {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
                             "break_reasons": reasons, "recompiled": recompiled,
                             "compile_and_3_steps_s": time.perf_counter() - t0}
        r = results[backbone]
        print(f"static check kit/{backbone}: {r['graphs']} graph(s), {r['graph_breaks']} graph break(s), "
              f"recompiled with other padding: {r['recompiled'] or 'no'} ({r['compile_and_3_steps_s']:.0f} s)")
        for reason in reasons:
            print(f"    break: {reason}")
    return results


# ------------------------------------------------------------------------------------ report


def fmt_mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def peak_tflops(args) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if args.device != "cuda":
        return None, ""
    name = torch.cuda.get_device_name()
    for key, value in BF16_PEAK_TFLOPS:
        if key in name:
            return value, f"{key} bf16 dense"
    return None, f"unknown card {name!r}: pass --peak-tflops"


def report(args, s: Shape, cases: list[Case], times, memory, started: str) -> dict:
    tokens = args.batch * s.seq
    fpt = flops_per_token(s)
    peak, peak_src = peak_tflops(args)
    rows = {}
    for c in cases:
        all_steps = [t for rnd in times[c.name] for t in rnd]
        med = statistics.median(all_steps)
        rows[c.name] = {
            "case": c.name, "backbone": c.backbone, "params": c.n_params, "step_s_median": med,
            "tokens_per_s": tokens / med, "per_round_tokens_per_s": [tokens / statistics.median(r) for r in times[c.name]],
            "memory_bytes": _mem_value(memory[c.name]) if c.name in memory else None,
            "warmup_s": getattr(c, "warmup_s", None), "amp": c.amp,
        }
        if args.device == "cuda":
            rows[c.name]["tflops"] = fpt * tokens / med / 1e12
            rows[c.name]["mfu"] = rows[c.name]["tflops"] / peak if peak else None

    def ratio(a, b):
        per_round = [x / y for x, y in zip(rows[a]["per_round_tokens_per_s"], rows[b]["per_round_tokens_per_s"], strict=True)]
        m_a, m_b = memory.get(a), memory.get(b)
        mem = _mem_value(m_a) / _mem_value(m_b) if m_a and m_b else None
        return {"speed": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "memory": mem}

    ratios = {}
    for c in cases:
        if not c.name.startswith("kit/"):
            continue
        b = c.name.split("/")[1].split("+")[0]
        if f"orig/{b}" in rows:
            ratios[f"{c.name} vs orig/{b}"] = ratio(c.name, f"orig/{b}")
        if "hf" in rows:
            ratios[f"{c.name} vs hf"] = ratio(c.name, "hf")

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else (_cpu_name() or platform.processor())
    print(f"\n## {args.shape} shape: vocab {s.vocab}, emb {s.emb}, discriminator {s.d_dim}x{s.d_depth}x{s.d_heads} "
          f"FFN {s.d_ff}, generator {s.g_dim}x{s.g_depth}x{s.g_heads} FFN {s.g_ff}, seq {s.seq}, batch {args.batch}")
    print(f"{device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, {started}; "
          f"{args.rounds} rounds x {args.steps} steps per case (after {args.warmup} warm-up), amp {args.amp}\n")
    head = "| case | params | tokens/s (median) | step ms | peak memory |"
    sep = "| --- | ---: | ---: | ---: | ---: |"
    if args.device == "cuda":
        head += " TFLOP/s | MFU |"
        sep += " ---: | ---: |"
    print(head)
    print(sep)
    for r in rows.values():
        line = (f"| {r['case']} | {r['params'] / 1e6:.1f} M | {r['tokens_per_s']:,.0f} | {1e3 * r['step_s_median']:,.0f} "
                f"| {fmt_mib(r['memory_bytes'])} |")
        if args.device == "cuda":
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
            line += f" {r['tflops']:.1f} | {mfu} |"
        print(line)
    if ratios:
        print("\n| electra-kit vs peer | speed (median of rounds) | range over rounds | peak memory |")
        print("| --- | ---: | ---: | ---: |")
        for k, v in ratios.items():
            mem = f"{v['memory']:.2f}x" if v["memory"] else "n/a"
            print(f"| {k} | {v['speed']:.2f}x | {v['min']:.2f}-{v['max']:.2f}x | {mem} |")
    mem_note = ("CUDA max_memory_allocated" if args.device == "cuda"
                else "peak RSS minus RSS before building, fresh process per case")
    print(f"\npeak memory: {mem_note}. FLOPs/token (nominal, every case): {fpt / 1e6:.1f} MFLOP"
          + (f"; peak {peak} TFLOP/s ({peak_src})" if peak else (f"; {peak_src}" if peak_src else "")))
    return {"shape": args.shape, "shape_dims": asdict(s), "batch": args.batch, "device": device_name,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": started,
            "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "amp": args.amp,
            "flops_per_token": fpt, "peak_tflops": peak, "rows": rows, "ratios": ratios}


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--tiny", action="store_true", help="shape tiny, batch 2, 1 round, 1 warm-up; peers optional (CI)")
    p.add_argument("--batch", type=int, help="sequences per step (default: 16 small, 1 base on CPU / 128, 32 on CUDA)")
    p.add_argument("--seq", type=int, help="override the shape's sequence length")
    p.add_argument("--steps", type=int, default=2, help="timed steps per case per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated")
    p.add_argument("--peers", default="orig,hf", help="comma-separated subset of orig,hf ('' for none)")
    p.add_argument("--extra", action="append", default=[], metavar="CASE",
                   help="another case, e.g. kit/transformer+bf16 or kit/performer+compile")
    p.add_argument("--compile", action="store_true", help="add a torch.compile'd kit case per backbone")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: min(2, cores))")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    p.add_argument("--profile", action="append", default=[], metavar="CASE", help="profile this case instead of timing")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--check-static", action="store_true",
                   help="compile electra-kit per backbone: graph breaks (host syncs) and recompiles under padding")
    p.add_argument("--peak-tflops", type=float, help="the card's bf16 peak, when its name is not in the table")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.shape = "tiny"
        args.rounds = min(args.rounds, 1)
        args.warmup = min(args.warmup, 1)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp == "auto":
        args.amp = "bf16" if args.device == "cuda" else "fp32"
    if args.batch is None:
        cuda = args.device == "cuda"
        args.batch = {"small": 128 if cuda else 16, "base": 32 if cuda else 1, "tiny": 2}[args.shape]
    s = SHAPES[args.shape]
    args.seq = args.seq or s.seq
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.peers = [x for x in args.peers.split(",") if x]
    if not args.threads:
        args.threads = min(2, os.cpu_count() or 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    s = SHAPES[args.shape]
    if args.seq != s.seq:
        s = Shape(**{**asdict(s), "seq": args.seq})
    device = torch.device(args.device)
    if args.child_memory:
        child_memory(args, s, device)
        return 0
    missing = missing_peers(args.peers)
    if missing:
        if not args.tiny:
            print("bench/throughput.py: a peer is not installed:\n  " + "\n  ".join(missing)
                  + "\n(use --peers '' to time electra-kit alone)", file=sys.stderr)
            return 2
        for m in missing:
            print(f"note: skipping a peer, not installed: {m}")
        args.peers = [] if importlib.util.find_spec("electra_pytorch") is None else [
            p for p in args.peers if p != "hf" or importlib.util.find_spec("transformers") is not None]
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = case_names(args)
    batches = make_batches(s, args.batch, device)
    if args.check_static:
        result = check_static(args, s, device)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"check_static": result, "shape": args.shape, "batch": args.batch}, f, indent=2)
        return 0
    if args.profile:
        for name in args.profile:
            profile_case(args, Case(name, s, device, args.amp), batches)
        return 0
    print(f"cases: {', '.join(names)}", flush=True)
    memory = {} if args.no_memory else measure_memory(args, names)
    cases = [Case(n, s, device, args.amp) for n in names]
    times = time_cases(args, cases, batches)
    result = report(args, s, cases, times, memory, started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
