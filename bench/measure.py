"""How the benchmarks measure: interleaved step timing, peak memory (a fresh process per case, or
the peak of one step in this process), the profiler, the compile check, and the report.

Cases (what is built) come from bench/cases.py; the command lines are bench/throughput.py and
bench/long_sequences.py.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import torch
from cases import PAD, Case, Shape, build_kit, flops_per_token, make_batches

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched against torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = [
    ("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]


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


def measure_memory(args, names: list[str], script: str) -> dict[str, dict]:
    """Peak memory of each case, each in a fresh ``script --child-memory CASE`` process."""
    out = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(script), *_child_argv(args), "--child-memory", name]
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


def time_cases(args, cases: list[Case], batches, peaks: dict | None = None,
               on_round=None) -> dict[str, list[list[float]]]:
    """{name: [[step seconds] per round]}, rounds interleaved across cases. With ``peaks`` (a dict),
    also the largest memory one timed step of each case added on top of what was resident before it
    (``step_peak_bytes``): {name: bytes}. ``on_round(times)`` is called after each round (partial results)."""
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
                before = reset_peak(c.device) if peaks is not None else 0
                t0 = time.perf_counter()
                c.step(batches[i % len(batches)])
                sync(c.device)
                steps.append(time.perf_counter() - t0)
                if peaks is not None:
                    peaks[c.name] = max(peaks.get(c.name, 0), peak_since_reset(c.device) - before)
            times[c.name].append(steps)
        line = ", ".join(f"{c.name} {args.batch * args.seq / statistics.median(times[c.name][-1]):,.0f}" for c in cases)
        print(f"  round {r + 1}/{args.rounds} tokens/s: {line}", flush=True)
        if on_round is not None:
            on_round(times)
    return times


def reset_peak(device: torch.device) -> int:
    """Start a new peak-memory window; returns what is resident now. CUDA: allocated tensors.
    CPU (Linux): the process's peak RSS (VmHWM) is set back to its current RSS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    _malloc_trim()  # freed heap pages go back to the OS, so the next step's allocations show as new pages
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_bytes()


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then be understated by reused free memory
        pass


def peak_since_reset(device: torch.device) -> int:
    """The peak since the last ``reset_peak``: CUDA max_memory_allocated, or the CPU's VmHWM."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


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
        if c.name.endswith("+nomask") and c.name.removesuffix("+nomask") in rows:  # what the all-true mask costs
            ratios[f"{c.name} vs {c.name.removesuffix('+nomask')}"] = ratio(c.name, c.name.removesuffix("+nomask"))
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


# ------------------------------------------------------------------------------------ helpers


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as a string for the report."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine(device: str) -> dict:
    """What the JSON records about the machine a table was measured on."""
    name = torch.cuda.get_device_name() if device == "cuda" else (_cpu_name() or platform.processor())
    return {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "python": platform.python_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_at_start": load_average()}


def write_json(path, result: dict) -> None:
    """The raw results beside the table (written whole, then renamed)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
