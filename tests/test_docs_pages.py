"""The shell commands of docs/*.md run as written (see test_docs.py; a file of its own so that pytest-xdist runs it
beside the README's, on another worker)."""

import pytest
from conftest import REPO
from test_docs import run_page, script

PAGES = [p for p in sorted((REPO / "docs").glob("*.md")) if script(p)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_pages_shell_commands_run(page, tmp_path, cache_dir):
    run_page(page, tmp_path)
