"""The wheel users install holds every module and config of the checkout (an editable install hides a package
left out of pyproject.toml's list: `electra_kit.serving` once was, and every tracked run failed after training)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def expected_files() -> set[str]:
    """The checkout's modules and gin files, named as the wheel names them."""
    names = {p.relative_to(REPO).as_posix() for p in (REPO / "electra_kit").rglob("*.py")}
    names |= {f"electra_kit/backbones/{p.name}" for p in (REPO / "backbones").glob("*.py")}
    names |= {f"electra_kit/gin/{p.name}" for p in (REPO / "gin").glob("*.gin")}
    return {n for n in names if "__pycache__" not in n}


def test_the_built_wheel_holds_every_module_and_config(tmp_path):
    # built from a clean copy of the sources: setuptools reuses a checkout's stale build/ folder
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("electra_kit", "backbones", "gin"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("electra_kit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected_files() - names)
    assert not missing, f"left out of the wheel (add the package to pyproject.toml): {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for group in ("[electra_kit.backbones]", "[electra_kit.objectives]", "[console_scripts]"):
        assert group in text, text
