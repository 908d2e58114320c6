"""Every shell command in README.md and docs/ runs as written, in the order a reader meets it, one bash session
per page in a fresh folder (with the checkout's tests/data beside it, as a checkout has).

A page shrinks a long command for the test with a comment before its block, `<!-- small: OLD => NEW; ... -->`
(the text says the size it was written for); a block the test cannot run (GPUs, a server that runs until
stopped) says why, `<!-- not run: REASON -->`, and a test of its own covers it. Set-up lines that install or
run the test suite are what `.ci/run` does itself: they are left out here (this suite runs on that install).
The docs also build with MkDocs in strict mode (no broken link between pages).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (?P<kind>small|not run): (?P<note>[^\n]*?) -->\n)?```(?P<lang>bash|sh|shell)\n(?P<body>.*?)```",
                   re.S)
# what .ci/run does before the suite runs: installing, and the suite itself
SET_UP = re.compile(r"^(python3(\.\d+)? -m venv |\. \.venv/bin/activate$|pip install |python -m pytest)")


def blocks(page: Path) -> list[dict]:
    return [m.groupdict() for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


def script(page: Path) -> str:
    """The page's runnable commands, shrunk where it says so, without the set-up steps."""
    lines = []
    for block in blocks(page):
        if block["kind"] == "not run":
            continue
        body = block["body"]
        if block["kind"] == "small":
            for pair in block["note"].split(";"):
                old, new = (part.strip() for part in pair.split("=>"))
                assert old in body, f"{page.name}: the small-size note names {old!r}, which its block does not hold"
                body = body.replace(old, new)
        for line in body.replace("\\\n", " ").splitlines():
            steps = [s.strip() for s in line.split(" && ") if not SET_UP.match(s.strip())]
            if any(steps):
                lines.append(" && ".join(s for s in steps if s))
    return "\n".join(lines)


def test_every_block_is_run_or_says_why_not():
    found = {page.name: blocks(page) for page in PAGES}
    assert sum(len(b) for b in found.values()) >= 12
    for name, page_blocks in found.items():
        for block in page_blocks:
            if block["kind"] == "not run":
                assert len(block["note"]) > 10, f"{name}: a block not run must say why"
    assert "pip install" in found["README.md"][0]["body"] and "electra-kit run" in found["README.md"][0]["body"]


def run_page(page: Path, tmp_path: Path) -> None:
    """``page``'s commands in one bash session in ``tmp_path`` (test_docs_pages.py runs docs/ on another worker)."""
    (tmp_path / "tests").mkdir()
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    env = cli_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    text = script(page)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{page.name}: exit {proc.returncode}\n--- script\n{text}\n--- stderr\n{proc.stderr[-4000:]}"


def test_the_readmes_shell_commands_run(tmp_path, cache_dir):
    run_page(REPO / "README.md", tmp_path)


def test_the_docs_build_with_mkdocs_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "finetune" / "index.html").is_file()
