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


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The electra_kit modules that ``name`` imports, resolved from its relative and absolute imports."""
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
            if target and target != name and target != "electra_kit":
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
    assert "electra_kit.training.trainer" in graph["electra_kit.training.finetune"]
    assert "electra_kit.backbone" in graph["electra_kit.backbones.transformer"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_electra_kit_has_no_import_cycle():
    files = module_files()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert cycles(graph) == []


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
    (("electra_kit.tracking", "electra_kit.rundir", "electra_kit.modelfolder", "electra_kit.training"),
     ("electra_kit.cli",)),
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
