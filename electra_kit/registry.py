"""Registries: name -> builder, for backbones and for objectives.

Built-ins and third-party plugins both arrive through entry-point groups: ``electra_kit.backbones``
(an entry point names a builder: ``builder(**kwargs) -> Backbone``) and ``electra_kit.objectives``
(an entry point names an :class:`~electra_kit.objectives.base.Objective` subclass). ``register_backbone``
/ ``register_objective`` add one at run time.

Entry points are listed from their distributions' metadata without importing anything: a plugin's module is
imported when it is first used (``create_backbone``, ``get_objective``), so a plugin whose import hangs, raises
or calls ``sys.exit`` cannot stop ``electra-kit backbones`` or a run that does not use it. Importing a plugin
that fails (SystemExit included) is a :class:`PluginLoadError` naming it when it was asked for, and a warning
naming it when every objective is loaded for gin. A plugin never replaces a built-in: an entry point from
another distribution under a built-in's name is a warning naming that distribution, and the built-in wins.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Callable

from .backbone import Backbone

ENTRY_POINT_GROUP = "electra_kit.backbones"
OBJECTIVE_GROUP = "electra_kit.objectives"
RUN_TIME = "register_backbone"  # the source of an entry added in-process (kept for the backbone API)


@dataclass
class BackboneEntry:  # the name predates objectives; the same record serves both registries
    name: str
    builder: Callable | None  # None until an entry point's module is imported (see ``load``)
    source: str  # "electra-kit 0.1.0 (built-in)", "my-plugin 1.2", or "register_backbone"
    target: str  # "module:attr" of the builder
    entry_point: EntryPoint | None = None

    @property
    def builtin(self) -> bool:
        return self.source.endswith("(built-in)")

    def load(self, kind: str) -> Callable:
        """The builder, importing the plugin's module on first use; a failure names the plugin, in one line."""
        if self.builder is None:
            try:
                self.builder = self.entry_point.load()
            except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the kit
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise PluginLoadError(f"{kind} plugin '{self.name}' ({self.target}, from {self.source}) failed to "
                                      f"import: {type(exc).__name__}{': ' + reason[:300] if reason else ''}") from None
        return self.builder


class UnknownBackboneError(KeyError):
    """A name nobody registered; the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class UnknownObjectiveError(UnknownBackboneError):
    pass


class PluginLoadError(UnknownBackboneError):
    """A registered plugin whose module failed to import; the message names the plugin and its distribution."""


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class _Registry:
    """One entry-point group plus what was registered in-process; entry points are read once."""

    def __init__(self, group: str, kind: str):
        self.group, self.kind = group, kind
        self.entries: dict[str, BackboneEntry] = {}
        self.discovered = False

    def register(self, name: str, builder: Callable | None = None):
        def add(fn: Callable):
            self.entries[name] = BackboneEntry(name, fn, RUN_TIME, _qualname(fn))
            return fn

        return add(builder) if builder is not None else add

    def discover(self) -> None:
        """Read the entry points' metadata (nothing is imported); a built-in's name stays the built-in's."""
        if self.discovered:
            return
        self.discovered = True
        found: dict[str, BackboneEntry] = {}
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown distribution"
            source = f"{dist_name} {dist.version if dist is not None else ''}".strip()
            builtin = dist_name == "electra-kit"
            entry = BackboneEntry(ep.name, None, source + " (built-in)" if builtin else source, ep.value, ep)
            kept = found.setdefault(ep.name, entry)
            if kept is not entry:  # the built-in wins; between two plugins, the first one found
                if entry.builtin:
                    found[ep.name], kept, entry = entry, entry, kept
                self._warn_shadowed(kept, entry)
        for name, entry in found.items():
            if name not in self.entries:  # an explicit registration wins over an entry point
                self.entries[name] = entry

    def _warn_shadowed(self, kept: BackboneEntry, dropped: BackboneEntry) -> None:
        what = "the built-in" if kept.builtin else f"the one from {kept.source}"
        warnings.warn(
            f"electra-kit: {dropped.source} registers a {self.kind} '{dropped.name}' ({dropped.target}), a name "
            f"{kept.source} registers already; {what} is used: rename the plugin's entry point",
            RuntimeWarning,
            stacklevel=4,
        )

    def load_all(self) -> list[BackboneEntry]:
        """Every entry with its module imported; one that fails is a warning naming it, and is left out."""
        loaded = []
        for entry in self.sorted_entries():
            try:
                entry.load(self.kind)
            except PluginLoadError as exc:
                warnings.warn(f"electra-kit: {exc}; it is skipped", RuntimeWarning, stacklevel=3)
                continue
            loaded.append(entry)
        return loaded

    def forget(self) -> None:
        for name in [n for n, e in self.entries.items() if e.source != RUN_TIME]:
            del self.entries[name]
        self.discovered = False

    def sorted_entries(self) -> list[BackboneEntry]:
        self.discover()
        return [self.entries[n] for n in sorted(self.entries)]

    def get(self, name: str, error: type[KeyError]) -> BackboneEntry:
        self.discover()
        if name not in self.entries:
            available = ", ".join(sorted(self.entries)) or "(none)"
            raise error(f"Unknown {self.kind} '{name}'; available: {available}")
        return self.entries[name]


_backbones = _Registry(ENTRY_POINT_GROUP, "backbone")
_objectives = _Registry(OBJECTIVE_GROUP, "objective")
_registry = _backbones.entries  # the backbone table, by its old name


def register_backbone(name: str, builder: Callable[..., Backbone] | None = None):
    """Register ``builder`` under ``name``; usable as ``@register_backbone('name')`` too."""
    return _backbones.register(name, builder)


def register_objective(name: str, cls: type | None = None):
    """Register an ``Objective`` subclass under ``name``; usable as a class decorator too."""
    return _objectives.register(name, cls)


def rediscover() -> None:
    """Forget entry-point results and look again (after installing a plugin in-process)."""
    _backbones.forget()
    _objectives.forget()


def backbone_entries() -> list[BackboneEntry]:
    """Every backbone, from entry-point metadata: no plugin is imported."""
    return _backbones.sorted_entries()


def list_backbones() -> list[str]:
    return [e.name for e in backbone_entries()]


def objective_entries() -> list[BackboneEntry]:
    """Every objective, its module imported (gin must see their configurables); a failing plugin is a warning."""
    return _objectives.load_all()


def list_objectives() -> list[str]:
    return [e.name for e in _objectives.sorted_entries()]


def get_objective(name: str) -> type:
    """The ``Objective`` class registered as ``name``."""
    return _objectives.get(name, UnknownObjectiveError).load("objective")


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build the backbone registered as ``name`` with ``kwargs``."""
    builder = _backbones.get(name, UnknownBackboneError).load("backbone")
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        if str(exc).startswith(f"backbone '{name}' "):  # the adapter's own one-line refusal
            raise
        raise TypeError(f"backbone '{name}' rejected its arguments {sorted(kwargs)}: {exc}") from exc
    if not isinstance(model, Backbone):
        raise TypeError(f"backbone '{name}' builder returned {type(model).__name__}, not an electra_kit Backbone")
    model.backbone_name = name
    model.backbone_kwargs = dict(kwargs)
    return model
