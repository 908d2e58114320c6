"""Long sequences: training throughput and peak memory from 512 to 8192 tokens, electra-kit on each
backbone against the Hugging Face ELECTRA pair (exact attention), and where each efficient backbone
overtakes exact attention.

    python bench/long_sequences.py --json bench/long_sequences.json         # 512 .. 8192, batch 1
    python bench/long_sequences.py --tiny                                    # seconds (CI)
    python bench/long_sequences.py --profile 8192:kit/reformer               # op profile of one case

Model: the ELECTRA-Small widths (bench/cases.py ``small``: discriminator 256 x 12 x 4 heads,
generator 64 x 12 x 1 head, embedding 128, vocabulary 30522) at sequence n, position table n long.
Reformer and Performer take the options of gin/reformer_long.gin and gin/performer_long.gin
(``LONG_OPTIONS``; a test keeps the two in step). Cases: ``kit/<backbone>`` and ``hf`` (SDPA
attention: exact, quadratic time, a fused kernel that never holds the (n x n) scores) and
``hf+eager`` (the same model with the scores written out in memory, as the classic implementation).

Per length, every case is built in this one process and timed interleaved (bench/measure.py
``time_cases``: ``--warmup`` steps each, then ``--rounds`` rounds of ``--steps`` steps, order rotated).
Memory per case: the weights and AdamW's two moments (12 bytes a parameter, resident between steps)
plus the largest amount one timed step added on top of what was resident before it (CPU: the
process's peak RSS, reset before each step through /proc/self/clear_refs; CUDA: max allocated).
Before a length runs, each case's memory there is predicted (a quadratic through its last three
measured lengths, a line through two, else a rough formula); a case predicted above ``--budget-gib``
is skipped and reported as "skipped: would need ~N GiB".

Crossover: the length where ``kit/<efficient>`` becomes faster than an exact-attention case, from
the per-round ratios at the measured lengths (the first length from which the ratio stays above 1,
interpolated on log length with the one before it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
from dataclasses import asdict, replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/throughput.py

import torch  # noqa: E402
from cases import BACKBONES, SHAPES, Case, make_batches, missing_peers  # noqa: E402
from measure import load_average, machine, profile_case, time_cases, write_json  # noqa: E402

LONG_OPTIONS = {"reformer": {"bucket_size": 64, "n_hashes": 4}, "performer": {}, "transformer": {}}
EXACT = ("hf", "kit/transformer")  # the exact-attention cases the efficient ones are compared with
GIB = 2**30


def predict_bytes(name: str, seq: int, history: list[tuple[int, int]], s, n_params: int, batch: int = 1) -> int:
    """Memory of case ``name`` at ``seq``: the larger of an extrapolation of its measured (length, bytes)
    and a rough physical estimate (measurements at short lengths are noisy, and a quadratic term
    hides below the linear ones there)."""
    return max(extrapolate(seq, history), rough_bytes(name, seq, s, n_params, batch))


def extrapolate(seq: int, history: list[tuple[int, int]]) -> int:
    """A quadratic through the last three measured points, a line through two, proportional to one."""
    pts = history[-3:]
    if len(pts) == 3:  # Lagrange form
        value = sum(y * math.prod((seq - xj) / (xi - xj) for xj, _ in pts if xj != xi) for xi, y in pts)
        return int(max(value, pts[-1][1]))
    if len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        return int(max(y1 + (y1 - y0) * (seq - x1) / (x1 - x0), y1))
    if len(pts) == 1:
        (x0, y0), = pts
        return int(y0 * max(1.0, seq / x0))
    return 0


def rough_bytes(name: str, seq: int, s, n_params: int, batch: int) -> int:
    """Weights, gradients and AdamW state (16 B a parameter) + ~300 KB of activations a token at the
    Small widths + for ``hf+eager`` two fp32 (n x n) matrices per head and layer (the softmax kept
    for backward, and its gradient), in both encoders."""
    per_sequence = 300_000 * seq
    if name == "hf+eager":
        per_sequence += 2 * 4 * seq * seq * (s.d_depth * s.d_heads + s.g_depth * s.g_heads)
    return 16 * n_params + batch * per_sequence


def fmt_bytes(b: int) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / 2**20:,.0f} MiB"


def case_names(args) -> list[str]:
    return [f"kit/{b}" for b in args.backbones] + args.peers + args.extra


def run_length(args, seq: int, history: dict, device: torch.device) -> dict:
    """Build, predict, time and measure every case at one length."""
    s = replace(SHAPES[args.shape], seq=seq)
    rows, cases = {}, []
    for name in case_names(args):
        case = Case(name, s, device, args.amp, LONG_OPTIONS)
        predicted = predict_bytes(name, seq, history.get(name, []), s, case.n_params, args.batch)
        if predicted > args.budget_gib * GIB:
            print(f"  {name} at {seq}: skipped: would need ~{predicted / GIB:.0f} GiB", flush=True)
            rows[name] = {"case": name, "seq": seq, "skipped": True, "predicted_bytes": predicted}
            del case
            continue
        rows[name] = {"case": name, "seq": seq, "skipped": False, "predicted_bytes": predicted,
                      "params": case.n_params}
        cases.append(case)
    if not cases:
        return rows
    largs = argparse.Namespace(**{**vars(args), "seq": seq})
    peaks: dict[str, int] = {}
    times = time_cases(largs, cases, make_batches(s, args.batch, device), peaks=peaks)
    tokens = args.batch * seq
    for c in cases:
        steps = [t for rnd in times[c.name] for t in rnd]
        resident = 12 * c.n_params  # fp32 weights + AdamW exp_avg + exp_avg_sq (grads are in the step)
        memory = resident + peaks[c.name]
        history.setdefault(c.name, []).append((seq, memory))
        rows[c.name].update({
            "step_s_median": statistics.median(steps), "tokens_per_s": tokens / statistics.median(steps),
            "per_round_tokens_per_s": [tokens / statistics.median(r) for r in times[c.name]],
            "step_peak_bytes": peaks[c.name], "memory_bytes": memory, "warmup_s": c.warmup_s,
        })
    return rows


def ratios(rows: dict, a: str, b: str) -> dict | None:
    """Speed and memory of ``a`` over ``b`` at one length (median of per-round ratios), if both ran."""
    ra, rb = rows.get(a), rows.get(b)
    if not ra or not rb or ra["skipped"] or rb["skipped"]:
        return None
    per_round = [x / y for x, y in zip(ra["per_round_tokens_per_s"], rb["per_round_tokens_per_s"], strict=True)]
    return {"speed": statistics.median(per_round), "min": min(per_round), "max": max(per_round),
            "memory": ra["memory_bytes"] / rb["memory_bytes"]}


def crossover(by_length: dict, fast: str, exact: str) -> dict:
    """Where ``fast`` overtakes ``exact``: the first measured length from which its speed ratio
    stays above 1 (a length where only ``fast`` ran counts as above), log-interpolated."""
    points = []
    for seq in sorted(by_length):
        rows = by_length[seq]
        if rows.get(fast, {}).get("skipped", True):
            continue
        r = ratios(rows, fast, exact)
        if r is not None:
            points.append((seq, r["speed"]))
        elif rows.get(exact, {}).get("skipped"):
            points.append((seq, math.inf))  # exact attention did not fit
    if not points:
        return {"length": None, "note": "no common lengths"}
    first = next((i for i in range(len(points)) if all(v > 1 for _, v in points[i:])), None)
    if first is None:
        return {"length": None, "note": f"not within {points[0][0]}-{points[-1][0]}"}
    if first == 0:
        return {"length": points[0][0], "note": f"already faster at {points[0][0]}"}
    (x0, r0), (x1, r1) = points[first - 1], points[first]
    if math.isinf(r1):
        return {"length": x1, "note": f"{exact} does not fit at {x1}"}
    t = -math.log(r0) / (math.log(r1) - math.log(r0))
    return {"length": round(math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))),
            "note": f"between {x0} ({r0:.2f}x) and {x1} ({r1:.2f}x)"}


def report(args, by_length: dict, started: str, info: dict, show: bool = True) -> dict:
    """The table (printed when ``show``) and the raw results."""
    s = SHAPES[args.shape]
    lines: list[str] = []
    out = lines.append
    out(f"\n## long sequences: vocab {s.vocab}, emb {s.emb}, discriminator {s.d_dim}x{s.d_depth}x{s.d_heads} "
          f"FFN {s.d_ff}, generator {s.g_dim}x{s.g_depth}x{s.g_heads} FFN {s.g_ff}, batch {args.batch}")
    out(f"{info['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads, {started}; "
          f"load average {info['load_average_at_start']} at start, {load_average()} at end; {args.rounds} rounds x "
          f"{args.steps} steps per case after {args.warmup} warm-up; amp {args.amp}; options {LONG_OPTIONS}\n")
    out("| length | case | tokens/s | step s | memory (predicted) | vs hf | vs kit/transformer |")
    out("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for seq, rows in sorted(by_length.items()):
        for name, r in rows.items():
            if r["skipped"]:
                out(f"| {seq} | {name} | skipped: would need ~{r['predicted_bytes'] / GIB:.0f} GiB | | | | |")
                continue
            vs = []
            for exact in EXACT:
                x = ratios(rows, name, exact) if name != exact else None
                vs.append(f"{x['speed']:.2f}x ({x['min']:.2f}-{x['max']:.2f}), mem {x['memory']:.2f}x" if x else "")
            out(f"| {seq} | {name} | {r['tokens_per_s']:,.0f} | {r['step_s_median']:.2f} "
                  f"| {fmt_bytes(r['memory_bytes'])} ({fmt_bytes(r['predicted_bytes'])}) | {vs[0]} | {vs[1]} |")
    crossings = {}
    for b in (b for b in args.backbones if b != "transformer"):  # the efficient ones
        for exact in EXACT:
            if f"kit/{b}" != exact and exact in case_names(args):
                crossings[f"kit/{b} vs {exact}"] = crossover(by_length, f"kit/{b}", exact)
    shares = {}
    for seq, rows in sorted(by_length.items()):
        for name in rows:
            if name.endswith("+backbones") and (x := ratios(rows, name.removesuffix("+backbones"), name)):
                shares[f"{name.removesuffix('+backbones')} at {seq}"] = {
                    "objective_share": 1 - x["speed"], "min": 1 - x["max"], "max": 1 - x["min"]}
    for k, v in shares.items():
        out(f"\nelectra-kit's objective (masking, heads, sampling, losses) in a step of {k}: "
            f"{100 * v['objective_share']:.0f}% ({100 * v['min']:.0f}-{100 * v['max']:.0f}% over rounds)")
    if crossings:
        out("\n| crossover | length | where |")
        out("| --- | ---: | --- |")
        for k, v in crossings.items():
            out(f"| {k} | {v['length'] or '-'} | {v['note']} |")
    out("\nmemory: 12 B x parameters (weights, AdamW moments) + the largest step's peak RSS above the RSS "
          "before it (CPU) / max allocated (CUDA); predicted before the length ran.")
    if show:
        print("\n".join(lines), flush=True)
    return {"benchmark": "long_sequences", "shape": args.shape, "shape_dims": asdict(s), "batch": args.batch,
            "date": started, "machine": info, "load_average_at_end": load_average(), "rounds": args.rounds,
            "steps": args.steps, "warmup": args.warmup, "amp": args.amp, "options": LONG_OPTIONS,
            "budget_gib": args.budget_gib, "lengths": {str(k): v for k, v in sorted(by_length.items())},
            "crossover": crossings, "objective_share": shares}


def _run_record(info: dict, date: str, lengths, settings: dict) -> dict:
    """One run's machine, date, lengths and timing settings (a table may join several runs' lengths)."""
    keep = ("rounds", "steps", "warmup", "batch", "peers", "backbones", "extra")
    return {**{k: v for k, v in info.items() if k != "runs"}, "date": date, "lengths": list(lengths),
            **{k: settings[k] for k in keep if k in settings}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,1024,2048,4096,8192", help="comma-separated, run in this order")
    p.add_argument("--tiny", action="store_true", help="tiny widths, lengths 64,128, 1 round (CI)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="timed steps per case per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated")
    p.add_argument("--peers", default="hf,hf+eager", help="comma-separated subset of hf,hf+eager ('' for none)")
    p.add_argument("--extra", action="append", default=[], metavar="CASE", help="another case, e.g. kit/reformer+bf16")
    p.add_argument("--budget-gib", type=float, default=16.0, help="skip a case predicted to need more")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: $OMP_NUM_THREADS, else min(2, cores))")
    p.add_argument("--profile", action="append", default=[], metavar="LENGTH:CASE", help="profile instead of timing")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--add-to", action="store_true",
                   help="keep the other lengths already in --json (another run's) and add these to it")
    args = p.parse_args(argv)
    if args.add_to and not args.json:
        p.error("--add-to needs --json FILE (the earlier run's results)")
    args.shape = "small"
    if args.tiny:
        args.shape, args.rounds = "tiny", min(args.rounds, 1)
        if args.lengths == p.get_default("lengths"):
            args.lengths = "64,128"
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.peers = [x for x in args.peers.split(",") if x]
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp == "auto":
        args.amp = "bf16" if args.device == "cuda" else "fp32"
    if not args.threads:
        args.threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or min(2, os.cpu_count() or 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.profile:
        for spec in args.profile:
            seq, _, name = spec.partition(":")
            s = replace(SHAPES[args.shape], seq=int(seq))
            largs = argparse.Namespace(**{**vars(args), "seq": int(seq)})
            profile_case(largs, Case(name, s, device, args.amp, LONG_OPTIONS), make_batches(s, args.batch, device))
        return 0
    missing = missing_peers(["hf"]) if args.peers else []
    if missing:
        if not args.tiny:
            print("bench/long_sequences.py: a peer is not installed:\n  " + "\n  ".join(missing)
                  + "\n(use --peers '' to time electra-kit alone)", file=sys.stderr)
            return 2
        print("note: skipping the Hugging Face pair, not installed: " + "; ".join(missing))
        args.peers = []
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine(args.device)
    print(f"cases: {', '.join(case_names(args))}; lengths {args.lengths}; load average {info['load_average_at_start']}",
          flush=True)
    history: dict = {}
    by_length: dict = {}
    runs = []
    if args.add_to:  # earlier lengths from an earlier run: kept as measured, and they feed the predictions
        with open(args.json) as f:
            earlier = json.load(f)
        by_length = {int(k): v for k, v in earlier["lengths"].items() if int(k) not in args.lengths}
        for seq, rows in sorted(by_length.items()):
            for name, r in rows.items():
                if not r["skipped"]:
                    history.setdefault(name, []).append((seq, r["memory_bytes"]))
        runs = earlier.get("runs") or [_run_record(earlier["machine"], earlier["date"], sorted(by_length), earlier)]
        started = f"{earlier['date']} + {started}"
    info["runs"] = runs + [_run_record(dict(info), started.split(" + ")[-1], args.lengths, vars(args))]
    for seq in args.lengths:
        print(f"length {seq}:", flush=True)
        by_length[seq] = run_length(args, seq, history, device)
        if args.json:  # partial results survive an interrupted run
            write_json(args.json, report(args, by_length, started, info, show=False) | {"partial": True})
    result = report(args, by_length, started, info)
    if args.json:
        write_json(args.json, result | {"partial": False})
    return 0


if __name__ == "__main__":
    sys.exit(main())
