"""One registry for scorers, explainers and datasets, filled by pluggy plugins.

Plugins are loaded lazily (on the first query) and once; each kind is collected on its own
first query, so listing scorers never imports an explainer's torch. Built-in plugins go
through the same hooks as third-party ones. A plugin that fails to import, or raises in a
hook, is recorded with its distribution name and skipped; an invalid or colliding
registration drops only that one object. The others load.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib
import inspect
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .datasets import DatasetSource, load_folder_source, parse_spec
from .errors import PluginError, UnknownNameError
from .explainers.base import Explainer
from .scorers.base import Scorer

__all__ = [
    "Entry",
    "PluginFailure",
    "PluginInfo",
    "PluginLoadWarning",
    "list_scorers",
    "create_scorer",
    "create_scorer_from_spec",
    "Grid",
    "parse_scorer_spec",
    "list_explainers",
    "create_explainer",
    "list_datasets",
    "load_dataset",
    "list_protocols",
    "get_protocol",
    "get_entry",
    "list_entries",
    "plugin_report",
    "register_plugin",
    "unregister_plugin",
    "reload_plugins",
]

#: Built-in plugin modules, registered before the entry points (as llm's DEFAULT_PLUGINS).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "oodlens.default_plugins.scorers",
    "oodlens.default_plugins.explainers",
    "oodlens.default_plugins.datasets",
    "oodlens.default_plugins.protocols",
)
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
KINDS = {
    "scorer": "register_scorers",
    "explainer": "register_explainers",
    "dataset": "register_datasets",
    "protocol": "register_protocols",
}


class PluginLoadWarning(RuntimeWarning):
    """A plugin could not be loaded; the others were. ``failure`` holds the details."""

    def __init__(self, message: str, failure: PluginFailure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class Entry:
    """One registered object."""

    kind: str  #: "scorer", "explainer", "dataset" or "protocol"
    name: str  #: registry name
    obj: Any  #: the class (scorer, explainer), loader function (dataset) or mapping (protocol)
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
    details: str = ""  #: the traceback (shown by ``oodlens --verbose``)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin."""

    plugin: str  #: plugin name
    distribution: str  #: its distribution
    hooks: tuple[str, ...]  #: the hooks it implements


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
        self._entries: dict[str, dict[str, Entry]] = {}
        self._hook_failures: dict[str, list[PluginFailure]] = {}

    def _add(self, pm: pluggy.PluginManager, plugin: object, name: str, dist: str) -> None:
        try:
            pm.register(plugin, name=name)
        except Exception as exc:  # pluggy.PluginValidationError, duplicate names, ...
            self._load_failures.append(self._fail(name, dist, "validate", exc))
            return
        self._dists[name] = dist

    @staticmethod
    def _fail(plugin: str, dist: str, stage: str, exc: BaseException) -> PluginFailure:
        failure = PluginFailure(
            plugin,
            dist,
            stage,
            f"{type(exc).__name__}: {exc}".splitlines()[0],
            "".join(traceback.format_exception(exc)),
        )
        warnings.warn(
            PluginLoadWarning(
                f"oodlens plugin {plugin!r} from distribution {dist!r} failed at {stage}: "
                f"{failure.error} (skipped; the rest works; 'oodlens plugins' shows details; "
                f"fix or uninstall it: pip uninstall {dist})",
                failure,
            ),
            stacklevel=4,
        )
        return failure

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
                        self._load_failures.append(self._fail(name, dist, "import", exc))
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
            self._entries, self._hook_failures = {}, {}
            return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered under ``name``."""
        with self._lock:
            pm = self.manager()
            if not pm.has_plugin(name):
                raise UnknownNameError(f"No plugin named {name!r} is registered.")
            pm.unregister(name=name)
            self._dists.pop(name, None)
            self._entries, self._hook_failures = {}, {}

    def reload(self) -> None:
        """Forget everything and load the plugins again on the next query."""
        with self._lock:
            self._pm, self._entries, self._hook_failures = None, {}, {}
            self._dists, self._load_failures = {}, []

    def _collect(self, kind: str) -> dict[str, Entry]:
        """Call one kind's hook on every plugin, one plugin at a time (failures isolated)."""
        with self._lock:
            if kind in self._entries:
                return self._entries[kind]
            pm = self.manager()
            hook = KINDS[kind]
            entries: dict[str, Entry] = {}
            failures: list[PluginFailure] = []
            plugins = [(pm.get_name(p), p) for p in pm.get_plugins()]
            order = {n: i for i, n in enumerate(self._dists)}
            plugins.sort(key=lambda np_: order.get(np_[0], len(order)))
            for pname, plugin in plugins:
                others = [p for _, p in plugins if p is not plugin]
                dist = self._dists.get(pname, "(runtime)")
                staged: list[Entry] = []
                rejected: list[tuple[str, BaseException]] = []
                register = self._make_register(kind, staged, rejected, pname, dist)
                try:
                    pm.subset_hook_caller(hook, remove_plugins=others)(register=register)
                except Exception as exc:
                    failures.append(self._fail(pname, dist, hook, exc))
                    continue
                for what, exc in rejected:
                    failures.append(self._fail(pname, dist, f"{hook} ({what})", exc))
                for e in staged:
                    if e.name in entries:
                        prev = entries[e.name]
                        exc = PluginError(
                            f"{kind} name {e.name!r} is already registered by "
                            f"{prev.distribution!r}; only this {kind} was skipped"
                        )
                        failures.append(self._fail(pname, dist, f"{hook} ({e.name})", exc))
                        continue
                    entries[e.name] = e
            self._hook_failures[kind] = failures
            self._entries[kind] = entries
            return entries

    @staticmethod
    def _make_register(
        kind: str,
        staged: list[Entry],
        rejected: list[tuple[str, BaseException]],
        pname: str,
        dist: str,
    ) -> Callable[..., None]:
        def register(
            obj: Any, loader: Callable[..., Any] | None = None, description: str = ""
        ) -> None:
            if kind == "dataset":
                if not isinstance(obj, str) or not obj or loader is None or not callable(loader):
                    rejected.append(
                        (
                            repr(obj),
                            PluginError(
                                "register() for datasets expects (name: str, loader, description)"
                            ),
                        )
                    )
                    return
                staged.append(Entry(kind, obj, loader, description, dist, pname))
                return
            if kind == "protocol":
                if not (isinstance(obj, str) and obj and isinstance(loader, Mapping)) or not {
                    "id",
                    "ood",
                } <= set(loader):
                    rejected.append(
                        (
                            repr(obj),
                            PluginError(
                                "register() for protocols expects (name: str, protocol: a "
                                "mapping with 'id' and 'ood', description)"
                            ),
                        )
                    )
                    return
                staged.append(Entry(kind, obj, loader, description, dist, pname))
                return
            base = Scorer if kind == "scorer" else Explainer
            try:
                name, desc, requires = _validate_class(kind, base, obj)
            except PluginError as exc:
                rejected.append((getattr(obj, "__name__", repr(obj)), exc))
                return
            staged.append(
                Entry(kind, name, obj, desc, dist, pname, requires if kind == "scorer" else ())
            )

        return register

    def entries(self, kind: str) -> dict[str, Entry]:
        return self._collect(kind)

    def failures(self) -> list[PluginFailure]:
        """Every load failure, after collecting every kind."""
        for kind in KINDS:
            self._collect(kind)
        hooks = [f for kind in KINDS for f in self._hook_failures.get(kind, [])]
        return list(self._load_failures) + hooks

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


def check_param_names(
    kind: str, name: str, cls: type, params: dict[str, Any], skip: int = 0
) -> None:
    """Raise ``TypeError`` naming any parameter that ``cls.__init__`` does not accept
    (``skip``: leading positional parameters after ``self`` that are not hyperparameters)."""
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

    Imports only what registering scorers needs (no torch for the built-ins).

    Example:
        >>> "msp" in list_scorers()
        True
        >>> list_scorers("*logit*")  # doctest: +SKIP
        ['logit_kde', 'max_logit']
    """
    return _filter(_REGISTRY.entries("scorer"), pattern)


def create_scorer(name: str, **params: Any) -> Scorer:
    """Create a registered scorer by name, e.g. ``create_scorer("msp", temperature=2.0)``.

    Parameters are checked here, before any data is seen: their names against ``__init__``
    and their values against the class's ``parameter_constraints``.

    Raises:
        UnknownNameError: no scorer has that name (the message lists valid names and close
            matches).
        TypeError: a parameter the scorer does not accept.
        InvalidParameterError: a value of the wrong type or out of range.
    """
    entry = get_entry("scorer", name)
    check_param_names("scorer", name, entry.obj, params)
    scorer = entry.obj(**params)
    scorer.check_params()
    return scorer


class Grid(tuple):
    """Values of one parameter to search, written ``k=1|10|50`` in a scorer spec."""

    def __repr__(self) -> str:
        return f"Grid({tuple(self)!r})"


def parse_scorer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"logit_kde:mode=class_conditional,top_k=2"`` -> ``("logit_kde", {...})``.

    Values are Python literals where they parse (numbers, True/False/None), strings
    otherwise. ``a|b|c`` is a search grid (a :class:`Grid`), for ``oodlens bench --tune``.

    Example:
        >>> parse_scorer_spec("msp:temperature=2")
        ('msp', {'temperature': 2})
        >>> parse_scorer_spec("knn:k=10|50")
        ('knn', {'k': Grid((10, 50))})
    """
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for token in (t for t in rest.split(",") if t):
        if "=" not in token:
            raise ValueError(f"Scorer spec {spec!r}: expected key=value, got {token!r}.")
        k, v = (s.strip() for s in token.split("=", 1))
        if not k:
            raise ValueError(f"Scorer spec {spec!r}: a parameter name is empty in {token!r}.")
        values = [_literal(x.strip()) for x in v.split("|")]
        params[k] = Grid(values) if len(values) > 1 else values[0]
    if not name.strip():
        raise ValueError(f"Scorer spec {spec!r} has no scorer name; write e.g. 'msp'.")
    return name.strip(), params


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def create_scorer_from_spec(spec: str) -> Scorer:
    """``create_scorer`` from a spec string such as ``"msp:temperature=2"`` (no grid)."""
    name, params = parse_scorer_spec(spec)
    grids = sorted(k for k, v in params.items() if isinstance(v, Grid))
    if grids:
        raise ValueError(
            f"Scorer spec {spec!r} has a search grid ({', '.join(grids)}); grids are searched "
            "only with --tune (tune=True), on held-out validation data."
        )
    return create_scorer(name, **params)


def list_explainers(pattern: str | None = None) -> list[str]:
    """Names of the registered explainers, sorted; ``pattern`` is a shell-style filter."""
    return _filter(_REGISTRY.entries("explainer"), pattern)


def create_explainer(name: str, model: Any, **params: Any) -> Explainer:
    """Create a registered explainer for ``model``, e.g.
    ``create_explainer("gradcam", model, layer="layer4")``; parameters are checked first."""
    entry = get_entry("explainer", name)
    check_param_names("explainer", name, entry.obj, params, skip=1)
    entry.obj.check_params(params)
    return entry.obj(model, **params)


def list_protocols(pattern: str | None = None) -> list[str]:
    """Names of the registered benchmark protocols (e.g. OpenOOD's ``cifar10``)."""
    return _filter(_REGISTRY.entries("protocol"), pattern)


def get_protocol(name: str) -> Mapping[str, Any]:
    """A registered protocol: its ``id`` and ``ood`` sets (see the ``register_protocols``
    hook); unknown names list the valid ones."""
    return get_entry("protocol", name).obj


def list_datasets() -> list[str]:
    """Registered dataset kinds (spec prefixes); a folder path is always accepted too."""
    return sorted(_REGISTRY.entries("dataset"))


def load_dataset(spec: str) -> DatasetSource:
    """Resolve a spec string to a :class:`~oodlens.datasets.DatasetSource` (see
    :mod:`oodlens.datasets` for the grammar): a registered kind, or a folder path."""
    kinds = _REGISTRY.entries("dataset")
    kind, arg, options, split = parse_spec(spec, tuple(kinds))
    if not kind:
        return load_folder_source(arg, split, spec)
    if kind not in kinds and (Path(spec.rsplit("@", 1)[0]).exists() or len(kind) == 1):
        return load_folder_source(spec.rsplit("@", 1)[0], split, spec)
    entry = get_entry("dataset", kind)
    return entry.obj(spec, arg, options, split)


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
