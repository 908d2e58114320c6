"""The package's shape: no import cycle among electra_kit's modules (imports anywhere in a file count,
function-local ones too), and every configurable lives beside the code it configures."""

import ast
from pathlib import Path

import electra_kit

PACKAGE = Path(electra_kit.__file__).resolve().parent
BACKBONES = PACKAGE.parent / "backbones" if not (PACKAGE / "backbones").is_dir() else PACKAGE / "backbones"


def module_files() -> dict[str, Path]:
    files = {f"electra_kit.{p.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}": p
             for p in PACKAGE.rglob("*.py")}
    files.update({f"electra_kit.backbones.{p.stem}": p for p in BACKBONES.glob("*.py")})
    return {name.removesuffix(".__init__"): path for name, path in files.items()}


def imports_of(name: str, path: Path, modules: set[str], *, face: bool = False) -> set[str]:
    """The electra_kit modules that ``name`` imports, resolved from its relative and absolute imports; ``face``:
    count ``from electra_kit import X`` (the package face) too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names]
            # ``from . import store`` names a sibling module, not the package's own namespace
            targets = submodules if all(m in modules for m in submodules) else [base, *submodules]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # electra_kit.tracking.Tracker -> electra_kit.tracking
                target = target.rpartition(".")[0]
            if target and target != name and (face or target != "electra_kit"):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_sees_real_edges():
    files = module_files()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert "electra_kit.objectives.base" in graph["electra_kit.objectives.electra"]
    assert "electra_kit.training.trainer" in graph["electra_kit.finetune.runner"]
    assert "electra_kit.backbone" in graph["electra_kit.backbones.transformer"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_electra_kit_has_no_import_cycle():
    files = module_files()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert cycles(graph) == []


def package_of(module: str) -> str:
    """``electra_kit.training.trainer`` -> ``electra_kit.training``; a top-level module is its own unit."""
    return ".".join(module.split(".")[:2])


# Package-level circles kept on purpose, each with its reason; anything else is a new circle to break.
PACKAGE_CIRCLES_ALLOWED = {
    frozenset({"electra_kit", "electra_kit.serving", "electra_kit.finetune", "electra_kit.training"}):
        "serving's MLflow pyfuncs load their model through the public face (load_context: `from electra_kit import "
        "load_classifier`), as MLflow's loader does in a serving process; pretraining and fine-tuning log those "
        "pyfuncs, and the face sets the thread policy from training before torch loads",
}


def test_packages_import_each_other_in_no_circle():
    """DESIGN.md: imports never run in a circle between packages either (issue 25: config, data, rundir, tracking
    and training were one circle through config's registration of configurables and rundir's resume)."""
    files = module_files()
    packages: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = {package_of(t) for t in imports_of(name, path, set(files) | {"electra_kit"}, face=True)}
        packages.setdefault(package_of(name), set()).update(targets - {package_of(name)})
    for target in set().union(*packages.values()):
        packages.setdefault(target, set())
    assert "electra_kit.config" in packages["electra_kit.training"]  # the graph sees real package edges
    found = [c for c in cycles(packages) if frozenset(c) not in PACKAGE_CIRCLES_ALLOWED]
    assert found == []
    assert packages["electra_kit.config"] <= {"electra_kit.registry"}, "config sits low: it imports no layer above"


def test_configurables_live_beside_their_code():
    """config/gin_config.py and training/pretrain.py do not import each other; pretrain() and tracking() are not the runner's."""
    files = module_files()
    modules = set(files)
    config = "electra_kit.config.gin_config"
    assert "electra_kit.training.pretrain" not in imports_of(config, files[config], modules)
    runner = files["electra_kit.training.pretrain"].read_text()
    assert "@gin.configurable" not in runner
    from electra_kit import tracking
    from electra_kit.objectives import base as objective

    assert objective.pretrain.__module__ == "electra_kit.objectives.base"
    assert tracking.tracking.__module__ == "electra_kit.tracking.tracker"


# DESIGN.md's layering as rules: (importers, what they must never import); a name covers its submodules.
FORBIDDEN = [
    (("electra_kit.backbone", "electra_kit.backbones", "electra_kit.objectives"),
     ("electra_kit.training", "electra_kit.tracking", "electra_kit.rundir.checkpoint", "electra_kit.cli")),
    (("electra_kit.data",), ("electra_kit.objectives", "electra_kit.training", "electra_kit.tracking",
                             "electra_kit.modelfolder", "electra_kit.cli")),
    (("electra_kit.tracking", "electra_kit.rundir", "electra_kit.modelfolder", "electra_kit.training",
      "electra_kit.finetune"), ("electra_kit.cli",)),
    (("electra_kit.training",), ("electra_kit.finetune",)),  # the engine knows nothing of the application on it
    (("electra_kit.training.trainer",), ("electra_kit.objectives.electra", "electra_kit.objectives.mlm")),
]


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_imports_point_down_the_design_layering():
    """Backbones and objectives never import training (distributed included), tracking, checkpoints or the
    CLI; data sits below the objectives; only the entry points import the CLI; the loop names no objective."""
    files = module_files()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert "electra_kit.training.distributed" in graph and "electra_kit.objectives.electra" in graph
    upward = sorted(f"{name} -> {target}" for importers, banned in FORBIDDEN
                    for name, targets in graph.items() if _within(name, importers)
                    for target in targets if _within(target, banned))
    assert upward == []
