"""One registry for scorers, explainers and datasets, filled by pluggy plugins.

Plugins are loaded lazily (on the first query) and once; built-in plugins go through the same
hooks as third-party ones. A plugin that fails to import, or raises or registers something
invalid in a hook, is recorded with its distribution name and skipped; the others load.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from ._errors import PluginError, UnknownNameError
from ._scorer import Scorer

__all__ = [
    "Entry",
    "PluginFailure",
    "PluginInfo",
    "PluginLoadWarning",
    "list_scorers",
    "create_scorer",
    "get_entry",
    "list_entries",
    "plugin_report",
    "register_plugin",
    "unregister_plugin",
    "reload_plugins",
]

#: Built-in plugin modules, registered before the entry points (as llm's DEFAULT_PLUGINS).
DEFAULT_PLUGINS: tuple[str, ...] = ("oodlens._builtin",)
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
KINDS = {
    "scorer": "register_scorers",
    "explainer": "register_explainers",
    "dataset": "register_datasets",
}


class PluginLoadWarning(RuntimeWarning):
    """A plugin could not be loaded; the others were."""


@dataclass(frozen=True)
class Entry:
    """One registered object."""

    kind: str  #: "scorer", "explainer" or "dataset"
    name: str  #: registry name
    obj: Any  #: the class (scorer, explainer) or loader function (dataset)
    description: str  #: one line
    distribution: str  #: the distribution that registered it (e.g. "oodlens")
    plugin: str  #: the plugin (module or object) name inside pluggy
    requires: tuple[str, ...] = ()  #: scorers only: required Outputs fields


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to import or to register."""

    plugin: str  #: entry-point or plugin name
    distribution: str  #: distribution that provides it
    stage: str  #: "import", "validate" or the hook name
    error: str  #: the exception, as text


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin."""

    plugin: str  #: plugin name
    distribution: str  #: its distribution
    hooks: tuple[str, ...]  #: the hooks it implements


def _explainer_base() -> type:
    from .explainers import Explainer

    return Explainer


def _validate_class(kind: str, base: type, obj: Any) -> tuple[str, str, tuple[str, ...]]:
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(f"register() for {kind}s expects a {base.__name__} subclass, got {obj!r}")
    if not obj.name or not isinstance(obj.name, str):
        raise PluginError(f"{obj.__name__} has no 'name' class attribute")
    requires = tuple(sorted(getattr(obj, "requires", ())))
    return obj.name, obj.description or (obj.__doc__ or "").strip().split("\n")[0], requires


class Registry:
    """Plugin manager plus the registered objects. Use the module-level functions instead."""

    def __init__(self, default_plugins: Iterable[str] = DEFAULT_PLUGINS) -> None:
        self._default_plugins = tuple(default_plugins)
        self._lock = threading.RLock()
        self._pm: pluggy.PluginManager | None = None
        self._dists: dict[str, str] = {}
        self._load_failures: list[PluginFailure] = []
        self._entries: dict[str, dict[str, Entry]] | None = None
        self._hook_failures: list[PluginFailure] = []

    def _add(self, pm: pluggy.PluginManager, plugin: object, name: str, dist: str) -> None:
        try:
            pm.register(plugin, name=name)
        except Exception as exc:  # pluggy.PluginValidationError, duplicate names, ...
            self._fail(name, dist, "validate", exc, self._load_failures)
            return
        self._dists[name] = dist

    def _fail(self, plugin: str, dist: str, stage: str, exc: BaseException, into: list) -> None:
        failure = PluginFailure(plugin, dist, stage, f"{type(exc).__name__}: {exc}")
        into.append(failure)
        warnings.warn(
            f"oodlens plugin {plugin!r} from distribution {dist!r} failed at {stage}: "
            f"{failure.error}. It was skipped; the other plugins work. Fix or uninstall it "
            f"(pip uninstall {dist}).",
            PluginLoadWarning,
            stacklevel=3,
        )

    def manager(self) -> pluggy.PluginManager:
        """The pluggy plugin manager, loading plugins on first use."""
        with self._lock:
            if self._pm is None:
                pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
                pm.add_hookspecs(hookspecs)
                for modname in self._default_plugins:
                    self._add(pm, importlib.import_module(modname), modname, "oodlens")
                for ep in entry_points(group=ENTRY_POINT_GROUP):
                    dist = ep.dist.name if ep.dist is not None else "unknown distribution"
                    name = f"{dist}:{ep.name}"
                    if pm.has_plugin(name):
                        continue
                    try:
                        plugin = ep.load()
                    except Exception as exc:
                        self._fail(name, dist, "import", exc, self._load_failures)
                        continue
                    self._add(pm, plugin, name, dist)
                self._pm = pm
            return self._pm

    def register_plugin(
        self, plugin: object, name: str | None = None, distribution: str = "(runtime)"
    ) -> str:
        """Register a plugin object (module or instance with hookimpls) at runtime."""
        with self._lock:
            pm = self.manager()
            name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
            pm.register(plugin, name=name)
            self._dists[name] = distribution
            self._entries = None
            return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered under ``name``."""
        with self._lock:
            pm = self.manager()
            if not pm.has_plugin(name):
                raise UnknownNameError(f"No plugin named {name!r} is registered.")
            pm.unregister(name=name)
            self._dists.pop(name, None)
            self._entries = None

    def reload(self) -> None:
        """Forget everything and load the plugins again on the next query."""
        with self._lock:
            self._pm, self._entries = None, None
            self._dists, self._load_failures, self._hook_failures = {}, [], []

    def _collect(self) -> dict[str, dict[str, Entry]]:
        with self._lock:
            if self._entries is not None:
                return self._entries
            pm = self.manager()
            entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
            failures: list[PluginFailure] = []
            plugins = [(pm.get_name(p), p) for p in pm.get_plugins()]
            order = {n: i for i, n in enumerate(self._dists)}
            plugins.sort(key=lambda np_: order.get(np_[0], len(order)))
            for kind, hook in KINDS.items():
                for pname, plugin in plugins:
                    others = [p for _, p in plugins if p is not plugin]
                    dist = self._dists.get(pname, "(runtime)")
                    staged: list[Entry] = []
                    register = self._make_register(kind, staged, pname, dist)
                    try:
                        pm.subset_hook_caller(hook, remove_plugins=others)(register=register)
                        for e in staged:
                            if e.name in entries[kind]:
                                prev = entries[kind][e.name]
                                raise PluginError(
                                    f"{kind} name {e.name!r} is already registered by "
                                    f"{prev.distribution!r}"
                                )
                    except Exception as exc:
                        self._fail(pname, dist, hook, exc, failures)
                        continue
                    for e in staged:
                        entries[kind][e.name] = e
            self._hook_failures = failures
            self._entries = entries
            return entries

    @staticmethod
    def _make_register(
        kind: str, staged: list[Entry], pname: str, dist: str
    ) -> Callable[..., None]:
        def register(
            obj: Any, loader: Callable[..., Any] | None = None, description: str = ""
        ) -> None:
            if kind == "dataset":
                if not isinstance(obj, str) or not obj or loader is None or not callable(loader):
                    raise PluginError(
                        "register() for datasets expects (name: str, loader, description)"
                    )
                staged.append(Entry(kind, obj, loader, description, dist, pname))
                return
            base = Scorer if kind == "scorer" else _explainer_base()
            name, desc, requires = _validate_class(kind, base, obj)
            staged.append(
                Entry(kind, name, obj, desc, dist, pname, requires if kind == "scorer" else ())
            )

        return register

    def entries(self, kind: str) -> dict[str, Entry]:
        return self._collect()[kind]

    def failures(self) -> list[PluginFailure]:
        self._collect()
        return list(self._load_failures) + list(self._hook_failures)

    def plugins(self) -> list[PluginInfo]:
        pm = self.manager()
        out = []
        for plugin in pm.get_plugins():
            name = pm.get_name(plugin)
            hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
            out.append(PluginInfo(name, self._dists.get(name, "(runtime)"), hooks))
        return sorted(out, key=lambda p: (p.distribution != "oodlens", p.distribution, p.plugin))


_REGISTRY = Registry()


def _unknown(kind: str, name: str, valid: Iterable[str]) -> UnknownNameError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownNameError(
        f"Unknown {kind} {name!r}. Valid {kind}s: {', '.join(valid) or '(none)'}.{hint}"
    )


def get_entry(kind: str, name: str) -> Entry:
    """The registry entry of ``kind`` ("scorer", "explainer", "dataset") called ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
    entries = _REGISTRY.entries(kind)
    if name not in entries:
        raise _unknown(kind, name, entries)
    return entries[name]


def list_entries(kind: str) -> list[Entry]:
    """All entries of ``kind``, sorted by name."""
    entries = _REGISTRY.entries(kind)
    return [entries[n] for n in sorted(entries)]


def _filter(names: Iterable[str], pattern: str | None) -> list[str]:
    names = sorted(names)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def check_params(kind: str, name: str, cls: type, params: dict[str, Any], skip: int = 0) -> None:
    """Raise ``TypeError`` naming any parameter that ``cls.__init__`` does not accept."""
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = list(sig.parameters)[1 + skip :]
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise TypeError(
                f"Unknown parameter {key!r} for {kind} {name!r}. Valid parameters: "
                f"{', '.join(valid) or '(none)'}.{hint}"
            )


def list_scorers(pattern: str | None = None) -> list[str]:
    """Names of the registered scorers, sorted; ``pattern`` is a shell-style filter.

    Example:
        >>> "msp" in list_scorers()
        True
        >>> list_scorers("*logit*")  # doctest: +SKIP
        ['logit_kde', 'max_logit']
    """
    return _filter(_REGISTRY.entries("scorer"), pattern)


def create_scorer(name: str, **params: Any) -> Scorer:
    """Create a registered scorer by name, e.g. ``create_scorer("msp", temperature=2.0)``.

    Raises:
        UnknownNameError: no scorer has that name (the message lists valid names and close
            matches).
        TypeError: a parameter the scorer does not accept.
    """
    entry = get_entry("scorer", name)
    check_params("scorer", name, entry.obj, params)
    return entry.obj(**params)


def plugin_report() -> tuple[list[PluginInfo], list[PluginFailure]]:
    """Installed plugins and the load failures, for ``oodlens plugins``."""
    return _REGISTRY.plugins(), _REGISTRY.failures()


def register_plugin(
    plugin: object, name: str | None = None, distribution: str = "(runtime)"
) -> str:
    """Register a plugin object at runtime (as if installed); returns its name."""
    return _REGISTRY.register_plugin(plugin, name=name, distribution=distribution)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    _REGISTRY.unregister_plugin(name)


def reload_plugins() -> None:
    """Re-discover entry points on the next query (e.g. after ``pip install``)."""
    _REGISTRY.reload()
