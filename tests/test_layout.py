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
    assert "electra_kit.objective" in graph["electra_kit.electra"]
    assert "electra_kit.trainer" in graph["electra_kit.finetune"]
    assert "electra_kit.backbone" in graph["electra_kit.backbones.transformer"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_electra_kit_has_no_import_cycle():
    files = module_files()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert cycles(graph) == []


def test_configurables_live_beside_their_code():
    """config.py and pretrain.py do not import each other; pretrain() and tracking() are not the runner's."""
    files = module_files()
    modules = set(files)
    assert "electra_kit.pretrain" not in imports_of("electra_kit.config", files["electra_kit.config"], modules)
    runner = files["electra_kit.pretrain"].read_text()
    assert "@gin.configurable" not in runner
    from electra_kit import objective, tracking

    assert objective.pretrain.__module__ == "electra_kit.objective"
    assert tracking.tracking.__module__ == "electra_kit.tracking.tracker"
