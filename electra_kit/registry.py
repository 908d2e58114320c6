"""Registries: name -> builder, for backbones and for objectives.

Built-ins and third-party plugins both arrive through entry-point groups: ``electra_kit.backbones``
(an entry point names a builder: ``builder(**kwargs) -> Backbone``) and ``electra_kit.objectives``
(an entry point names an :class:`~electra_kit.objectives.base.Objective` subclass). ``register_backbone``
/ ``register_objective`` add one at run time. A plugin that fails to import is a warning naming it;
every other entry keeps working.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from .backbone import Backbone

ENTRY_POINT_GROUP = "electra_kit.backbones"
OBJECTIVE_GROUP = "electra_kit.objectives"
RUN_TIME = "register_backbone"  # the source of an entry added in-process (kept for the backbone API)


@dataclass(frozen=True)
class BackboneEntry:  # the name predates objectives; the same record serves both registries
    name: str
    builder: Callable
    source: str  # "electra-kit 0.1.0 (built-in)", "my-plugin 1.2", or "register_backbone"
    target: str  # "module:attr" of the builder


class UnknownBackboneError(KeyError):
    """A name nobody registered; the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class UnknownObjectiveError(UnknownBackboneError):
    pass


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
        if self.discovered:
            return
        self.discovered = True
        for ep in entry_points(group=self.group):
            if ep.name in self.entries:  # an explicit registration wins over an entry point
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown distribution"
            source = f"{dist_name} {dist.version if dist is not None else ''}".strip()
            if dist_name == "electra-kit":
                source += " (built-in)"
            try:
                builder = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                warnings.warn(
                    f"electra-kit: {self.kind} plugin '{ep.name}' ({ep.value}, from {source}) failed to load "
                    f"and is skipped: {type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self.entries[ep.name] = BackboneEntry(ep.name, builder, source, ep.value)

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
    return _backbones.sorted_entries()


def list_backbones() -> list[str]:
    return [e.name for e in backbone_entries()]


def objective_entries() -> list[BackboneEntry]:
    return _objectives.sorted_entries()


def list_objectives() -> list[str]:
    return [e.name for e in objective_entries()]


def get_objective(name: str) -> type:
    """The ``Objective`` class registered as ``name``."""
    return _objectives.get(name, UnknownObjectiveError).builder


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build the backbone registered as ``name`` with ``kwargs``."""
    entry = _backbones.get(name, UnknownBackboneError)
    try:
        model = entry.builder(**kwargs)
    except TypeError as exc:
        if str(exc).startswith(f"backbone '{name}' "):  # the adapter's own one-line refusal
            raise
        raise TypeError(f"backbone '{name}' rejected its arguments {sorted(kwargs)}: {exc}") from exc
    if not isinstance(model, Backbone):
        raise TypeError(f"backbone '{name}' builder returned {type(model).__name__}, not an electra_kit Backbone")
    model.backbone_name = name
    model.backbone_kwargs = dict(kwargs)
    return model
