"""gin configuration: where files are found, how they are parsed, and what is reported.

Config names resolve against the working directory first, then the gin files shipped inside
the package (``electra_kit/gin``), so ``electra-kit run reformer_small.gin`` works after a
plain ``pip install``. Bindings given on the command line apply after the files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import gin

from ..registry import create_backbone


class ConfigError(ValueError):
    """A config file or binding is wrong; the message names the file, line or binding."""


@gin.configurable
def backbone(name: str = gin.REQUIRED, **kwargs):
    """The gin face of the registry: ``generator/backbone.name = 'reformer'``.

    ``backbone.X`` reaches whichever backbone a scope names; options that only one adapter takes are bound
    through :func:`backbone_options` in the scope of its name, and the ``backbone.X`` bindings win over them."""
    return create_backbone(name, **{**adapter_options(name), **kwargs})


@gin.configurable
def backbone_options(**kwargs) -> dict:
    """Keywords for one adapter alone, bound in the scope of its registry name (``-`` read as ``_``):
    ``transformer/backbone_options.rotary_pos_emb = True`` reaches 'transformer' backbones and no other."""
    return kwargs


def adapter_options(name: str) -> dict:
    """What ``NAME/backbone_options.*`` binds, whatever scope (generator, discriminator) is active."""
    scope = re.sub(r"\W", "_", name)
    if not re.fullmatch(r"[A-Za-z_]\w*", scope):
        return {}
    with gin.config_scope([scope]):  # a list replaces the active scopes: only NAME/... (and unscoped) bindings
        return backbone_options()


def packaged_gin_dir() -> Path:
    """The shipped gin files: ``electra_kit/gin`` in an installed wheel, ``gin/`` in a checkout.

    (``gin/`` has no ``__init__.py`` on purpose: a regular package named ``gin`` at the repo root
    would shadow the gin-config library for anything run from there.)
    """
    here = Path(__file__).resolve().parent.parent  # electra_kit/
    for candidate in (here / "gin", here.parent / "gin"):
        if candidate.is_dir() and any(candidate.glob("*.gin")):
            return candidate
    return here / "gin"


def resolve_config(name: str) -> Path:
    """A config path as given, or relative to the working directory, or inside the package."""
    for candidate in (Path(name), Path.cwd() / name, packaged_gin_dir() / name, packaged_gin_dir() / Path(name).name):
        if candidate.is_file():
            return candidate.resolve()
    shipped = sorted(p.name for p in packaged_gin_dir().glob("*.gin"))
    raise ConfigError(
        f"gin file '{name}' not found in {Path.cwd()} or in the packaged configs; shipped configs: {', '.join(shipped)}"
    )


class _QuietSearchPath(logging.Filter):
    """gin logs an ERROR for every search-path entry an include is *not* in; only real misses matter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


logging.getLogger().addFilter(_QuietSearchPath())


def parse(config_files: list[str], bindings: list[str] = ()) -> list[Path]:
    """Parse files then bindings into gin's global config; return the resolved files. The configurables must be
    registered first, by whoever composes the run (``training.pretrain.parse_config``): this layer imports none."""
    gin.clear_config()
    paths = [resolve_config(f) for f in config_files]
    for directory in dict.fromkeys([packaged_gin_dir(), *(p.parent for p in paths), Path.cwd()]):
        gin.add_config_file_search_path(str(directory))
    search = list(dict.fromkeys([packaged_gin_dir(), *(p.parent for p in paths), Path.cwd()]))
    for path in paths:
        _check_includes(path, search, ())
        try:
            gin.parse_config_file(str(path))
        except Exception as exc:
            raise ConfigError(_describe_parse_error(exc, path)) from exc
    for binding in bindings:
        for m in _INCLUDE.finditer(binding):  # an include on the command line may start a cycle too
            for candidate in (Path(m.group(2)), *(d / m.group(2) for d in search)):
                if candidate.is_file():
                    _refuse_non_gin(candidate, m.group(2), f"--gin binding {binding!r}")
                    _check_includes(candidate.resolve(), search, ())
                    break
        try:
            gin.parse_config(binding)
        except Exception as exc:
            raise ConfigError(f"in --gin binding {binding!r}: {_one_line(exc)}") from exc
    _check_macros()
    return paths


_INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1""", re.MULTILINE)


def _check_includes(path: Path, search: list[Path], chain: tuple[Path, ...]) -> None:
    """Refuse a gin file that includes itself, directly or through others (gin would recurse ~1000 deep)."""
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(path):], path))
        raise ConfigError(f"{chain[0]}: gin includes form a cycle: {cycle}; remove one of these includes")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # gin's own parse reports an unreadable file
    for m in _INCLUDE.finditer(text):
        name = m.group(2)
        for candidate in (Path(name), *(d / name for d in (path.parent, *search))):
            if candidate.is_file():
                _refuse_non_gin(candidate, name, str(path))
                _check_includes(candidate.resolve(), search, (*chain, path))
                break


def _refuse_non_gin(target: Path, name: str, where: str) -> None:
    """gin parses an included file as gin and its errors quote the file: an include may name only a .gin file
    (links resolved), so that a stray ``include '/etc/shadow'`` shows the file's name, never a word of it."""
    if target.resolve().suffix != ".gin":
        what = "a link to a file that is not a .gin file" if target.suffix == ".gin" else "not a .gin file"
        raise ConfigError(f"{where}: include '{name}' refused: {what} (its content is not shown); "
                          "include names gin files only")


def _check_macros() -> None:
    """Every ``%MACRO`` a binding uses must be defined; gin would only find out deep in the first call."""
    import gin.config as gin_internals

    macro = gin_internals.get_configurable(gin_internals.macro)
    for (scope, selector), params in list(gin_internals._CONFIG.items()):
        for param, value in params.items():
            for ref in gin_internals.iterate_references(value, to=macro):
                name = ref.scoped_selector.rsplit("/", 1)[0]  # "generator/DEPTH/gin.macro": a scoped macro
                if "value" not in gin_internals._CONFIG.get((name, "gin.macro"), {}):
                    where = (f"the macro {scope}" if selector == "gin.macro" else
                             f"{scope + '/' if scope else ''}{selector.rsplit('.', 1)[-1]}.{param}")
                    raise ConfigError(f"{where} uses the macro %{name}, which no gin file or --gin binding "
                                      f"defines; define it (e.g. --gin \"{name} = ...\") or fix the name")
    _check_macro_circles(gin_internals, macro)


def _check_macro_circles(gin_internals, macro) -> None:
    """Macros whose values name each other in a circle (``A = %B``, ``B = %A``) would recurse until Python gives up."""
    names = {}  # macro -> the macros its value uses
    for (scope, selector), params in gin_internals._CONFIG.items():
        if selector == "gin.macro" and "value" in params:
            names[scope] = [ref.scoped_selector.rsplit("/", 1)[0]
                            for ref in gin_internals.iterate_references(params["value"], to=macro)]

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            circle = " -> ".join(f"%{n}" for n in (*path[path.index(name):], name))
            raise ConfigError(f"the gin macros {circle} are defined by each other in a circle; give one of them a value")
        for used in names.get(name, ()):
            visit(used, (*path, name))

    for name in sorted(names):
        visit(name, ())


def _one_line(exc: BaseException) -> str:
    """gin's parse errors span lines (Python's literal parser, then gin's own); keep gin's words, on one line."""
    lines = [x.strip() for x in (str(exc).strip() or type(exc).__name__).splitlines() if x.strip()]
    useful = [x for x in lines if "malformed node or string" not in x] or lines
    return "; ".join(useful)


def _describe_parse_error(exc: Exception, path: Path) -> str:
    text = str(exc)
    if isinstance(exc, IOError) or "Unable to open file" in text or "No such file" in text:
        m = re.search(r"Unable to open file: ([^\s.]+\.gin)", text)
        missing = m.group(1) if m else text
        return f"{path}: includes a gin file that does not exist: {missing}"
    # gin's parser and binding errors already carry "In file ..., line N"; keep them whole
    return f"{path}: {text}" if str(path) not in text else text


def query(binding_key: str, default=None):
    try:
        return gin.query_parameter(binding_key)
    except (ValueError, KeyError):
        return default


def operative_config() -> str:
    return gin.operative_config_str()


def unread_bindings() -> list[str]:
    """Bindings of configurables this process called that gin never supplied, as ``scope/Configurable.param``: the
    caller passed the parameter itself (``Electra.mask_token_id``: the kit sets it from the tokenizer), so the binding
    changed nothing. Configurables never called (``Electra.*`` in a MaskedLM run: a shared base file) are not named."""
    import gin.config as gin_internals

    calls = list(gin_internals._OPERATIVE_CONFIG.items())
    unread = []
    for (scope, selector), params in gin_internals._CONFIG.items():
        if selector == "gin.macro":
            continue
        parts = scope.split("/") if scope else []
        read = [used for (call_scope, called), used in calls
                if called == selector and all(p in call_scope.split("/") for p in parts)]
        if read:
            name = f"{scope + '/' if scope else ''}{selector.rsplit('.', 1)[-1]}"
            unread += [f"{name}.{param}" for param in params if not any(param in used for used in read)]
    return sorted(unread)


class _Ref:
    """A gin reference or macro inside a parsed value: repr() gives its gin text, or a macro's value."""

    def __init__(self, text: str, macros: dict | None = None, name: str | None = None):
        self.text, self.macros, self.name = text, macros, name

    def __repr__(self) -> str:
        if self.macros is not None and self.name in self.macros:
            return repr(self.macros[self.name])
        return self.text


def flatten_gin_config(operative_config_str: str) -> dict[str, str]:
    """gin's operative config text -> {"scope/Configurable.param": "value"}, with macros resolved.

    Values keep gin's syntax (``'reformer'``, ``0.0005``, ``@generator/backbone()``, containers on one line),
    except that ``%MACRO`` is replaced by its value, so that two runs' params differ where their values do.
    The macros are params too, under their own name (``HIDDEN``). Parsed with gin's own parser.
    """
    from gin import config_parser

    macros: dict[str, object] = {}

    class Delegate(config_parser.ParserDelegate):
        def configurable_reference(self, scoped_name, evaluate):
            return _Ref(f"@{scoped_name}()" if evaluate else f"@{scoped_name}")

        def macro(self, name):
            return _Ref(f"%{name}", macros, name)

    out: dict[str, str] = {}
    statements = [st for st in config_parser.ConfigParser(operative_config_str, Delegate())
                  if isinstance(st, config_parser.BindingStatement)]
    for st in statements:
        if not st.arg_name:  # a macro definition: NAME = value
            macros["/".join(p for p in (st.scope, st.selector) if p)] = st.value
    for st in statements:
        key = "/".join(p for p in (st.scope, st.selector) if p)
        out[f"{key}.{st.arg_name}" if st.arg_name else key] = repr(st.value)
    return out
