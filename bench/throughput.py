"""Training-step throughput of electra-kit against its peers, measured interleaved in one process.

    python bench/throughput.py                       # ELECTRA-Small shape, every backbone, both peers
    python bench/throughput.py --shape base          # ELECTRA-Base shape (seq 512)
    python bench/throughput.py --tiny --steps 2      # a seconds-long smoke run (CI); no peer is required
    python bench/throughput.py --profile kit/transformer --profile orig/transformer

The cases (what is built) live in bench/cases.py, the measuring (timing, memory subprocess, profiler,
compile check, report) in bench/measure.py; this file is the command line.

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
import io
import os
import sys
from dataclasses import asdict

# Before torch starts OpenMP: on a CPU shared with other processes, OpenMP's default of spinning at
# its barriers made 2 threads 8x slower than 1 on a loaded 2-core machine (a descheduled thread
# stalls its partner; bench/RESULTS.md). Every case runs under it alike; set it yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from cases import BACKBONES, SHAPES, Case, Shape, case_names, make_batches, missing_peers  # noqa: E402
from measure import check_static, child_memory, measure_memory, profile_case, report, time_cases, write_json  # noqa: E402


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
            write_json(args.json, {"check_static": result, "shape": args.shape, "batch": args.batch})
        return 0
    if args.profile:
        for name in args.profile:
            profile_case(args, Case(name, s, device, args.amp), batches)
        return 0
    print(f"cases: {', '.join(names)}", flush=True)
    memory = {} if args.no_memory else measure_memory(args, names, __file__)
    cases = [Case(n, s, device, args.amp) for n in names]

    def save_partial(times):  # the rounds so far survive a run that is killed (bench/gpu_check.sh's timeouts)
        if args.json:
            with contextlib.redirect_stdout(io.StringIO()):
                write_json(args.json, report(args, s, cases, times, memory, started) | {"partial": True})

    times = time_cases(args, cases, batches, on_round=save_partial)
    result = report(args, s, cases, times, memory, started)
    if args.json:
        write_json(args.json, result | {"partial": False})
    return 0


if __name__ == "__main__":
    sys.exit(main())
