"""Backbone registry: name -> builder.

Built-ins and third-party plugins both arrive through the entry-point group
``electra_kit.backbones`` (an entry point names a builder: ``builder(**kwargs) -> Backbone``).
``register_backbone`` adds one at run time. A plugin that fails to import is a warning naming
it; every other backbone keeps working.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from .backbone import Backbone

ENTRY_POINT_GROUP = "electra_kit.backbones"


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    builder: Callable[..., Backbone]
    source: str  # "electra-kit 0.1.0 (built-in)", "my-plugin 1.2", or "register_backbone"
    target: str  # "module:attr" of the builder


class UnknownBackboneError(KeyError):
    """A backbone name nobody registered; the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


_registry: dict[str, BackboneEntry] = {}
_discovered = False


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def register_backbone(name: str, builder: Callable[..., Backbone] | None = None, *, source: str = "register_backbone"):
    """Register ``builder`` under ``name``; usable as ``@register_backbone('name')`` too."""

    def add(fn: Callable[..., Backbone]):
        _registry[name] = BackboneEntry(name, fn, source, _qualname(fn))
        return fn

    return add(builder) if builder is not None else add


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registry:  # an explicit register_backbone wins over an entry point
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
                f"electra-kit: backbone plugin '{ep.name}' ({ep.value}, from {source}) failed to load "
                f"and is skipped: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        _registry[ep.name] = BackboneEntry(ep.name, builder, source, ep.value)


def rediscover() -> None:
    """Forget entry-point results and look again (after installing a plugin in-process)."""
    global _discovered
    for name in [n for n, e in _registry.items() if e.source != "register_backbone"]:
        del _registry[name]
    _discovered = False


def backbone_entries() -> list[BackboneEntry]:
    _discover()
    return [_registry[n] for n in sorted(_registry)]


def list_backbones() -> list[str]:
    return [e.name for e in backbone_entries()]


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build the backbone registered as ``name`` with ``kwargs``."""
    _discover()
    if name not in _registry:
        available = ", ".join(sorted(_registry)) or "(none)"
        raise UnknownBackboneError(f"Unknown backbone '{name}'; available: {available}")
    try:
        model = _registry[name].builder(**kwargs)
    except TypeError as exc:
        raise TypeError(f"backbone '{name}' rejected its arguments {sorted(kwargs)}: {exc}") from exc
    if not isinstance(model, Backbone):
        raise TypeError(f"backbone '{name}' builder returned {type(model).__name__}, not an electra_kit Backbone")
    model.backbone_name = name
    model.backbone_kwargs = dict(kwargs)
    return model
