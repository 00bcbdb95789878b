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
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .datasets import DatasetSource, load_folder_source, parse_spec, spec_split
from .errors import PluginError, UnknownNameError
from .explainers.base import Explainer
from .protocol import Protocol
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
    "ScorerSpec",
    "MAX_SPEC_LENGTH",
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
    obj: Any  #: the class (scorer, explainer), loader function (dataset) or Protocol
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
                try:
                    if not isinstance(obj, str) or not obj:
                        raise ValueError(f"a protocol needs a non-empty name, got {obj!r}")
                    protocol = Protocol.from_mapping(obj, loader, description)
                except ValueError as exc:
                    rejected.append(
                        (
                            repr(obj),
                            PluginError(
                                f"register() for protocols expects (name, protocol: a mapping "
                                f"with 'id' and 'ood', description): {exc}"
                            ),
                        )
                    )
                    return
                staged.append(
                    Entry(kind, obj, protocol, protocol.description or description, dist, pname)
                )
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


#: The longest scorer spec accepted (a longer one is refused with a message, not parsed).
MAX_SPEC_LENGTH = 1000
#: The deepest nesting of specs inside list parameters (``[...]``).
MAX_SPEC_DEPTH = 4


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer spec, parsed once (:func:`parse_scorer_spec`) and passed down: to the
    harness, to parameter search and to ``oodlens explain``.

    The grammar, in full::

        spec   := NAME [":" param ("," param)*]
        param  := KEY "=" value ("|" value)*      several values: a search grid (--tune)
        value  := "[" [item ("," item)*] "]"      a list
                | LITERAL                         a number, True/False/None, or text
        item   := spec                            a nested spec: NAME or NAME:..., naming a
                                                  registered scorer (no grid inside)
                | LITERAL

    ``,`` and ``|`` separate parameters and grid values only outside brackets, so a list
    parameter can hold other specs with their own parameters, e.g.
    ``fusion:members=[knn:k=10,msp],weights=[0.5,0.5]``. A repeated key, an empty key or
    value, unbalanced brackets, a spec longer than :data:`MAX_SPEC_LENGTH` characters or
    nested deeper than :data:`MAX_SPEC_DEPTH` are errors.

    Attributes:
        text: the spec as written (stripped): the scorer's label in every table.
        name: the registered scorer name.
        params: fixed parameters (nested specs as :class:`ScorerSpec`, lists as tuples).
        grid: parameters written with ``|``: the values to search with ``--tune``.
        entry: the registry :class:`Entry` (class, distribution).
        kinds: what the scorer reads: ``Outputs`` fields and ``"model"`` for a model-aware
            scorer (:meth:`Scorer.requirements` of the scorer with these parameters).

    Example:
        >>> spec = parse_scorer_spec("knn:k=10|50")
        >>> spec.name, spec.grid, spec.distribution
        ('knn', {'k': Grid((10, 50))}, 'oodlens-feature-scorers')
    """

    text: str
    name: str
    params: Mapping[str, Any]
    grid: Mapping[str, tuple[Any, ...]]
    entry: Entry = field(repr=False, compare=False)
    kinds: tuple[str, ...] = ()

    @property
    def model_aware(self) -> bool:
        """Whether the scorer needs the network itself (its own passes over the images)."""
        return "model" in self.kinds

    @property
    def reads_stages(self) -> bool:
        """Whether the scorer reads earlier stages of the network (extracted with the rest,
        at an extra cost: see ``ExtractOptions.stages``)."""
        from .scorers.base import block_requirement

        return any(block_requirement(kind) is not None for kind in self.kinds)

    @property
    def distribution(self) -> str:
        """The distribution that registered the scorer."""
        return self.entry.distribution

    def create(self, **params: Any) -> Scorer:
        """A new scorer with the spec's fixed parameters, and ``params`` (e.g. a grid
        candidate) over them; a spec with a grid needs its grid parameters here."""
        missing = sorted(set(self.grid) - set(params))
        if missing:
            raise ValueError(
                f"Scorer spec {self.text!r} has a search grid ({', '.join(missing)}); grids are "
                "searched only with --tune (tune=True), on held-out validation data."
            )
        return create_scorer(self.name, **{**self.params, **params})

    def __str__(self) -> str:
        return self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _split_top(text: str, sep: str, spec: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise ValueError(
                    f"Scorer spec {spec[:80]!r} nests lists deeper than {MAX_SPEC_DEPTH} levels."
                )
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"Scorer spec {spec[:80]!r} has a ']' without its '['.")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"Scorer spec {spec[:80]!r} has a '[' without its ']'.")
    parts.append(text[start:])
    return parts


def _value(text: str, spec: str, depth: int) -> Any:
    text = text.strip()
    if not text:
        raise ValueError(f"Scorer spec {spec!r}: a value is empty; write key=value.")
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        items = _split_top(inner, ",", spec) if inner else []
        return tuple(_item(item, spec, depth + 1) for item in items)
    return _literal(text)


def _item(text: str, spec: str, depth: int) -> Any:
    text = text.strip()
    if not text:
        raise ValueError(f"Scorer spec {spec!r}: a list item is empty.")
    if text.startswith("["):
        return _value(text, spec, depth)
    head = text.partition(":")[0].strip()
    if ":" in text or head in _REGISTRY.entries("scorer"):
        nested = _parse(text, depth)
        if nested.grid:
            raise ValueError(
                f"Scorer spec {spec!r}: the nested spec {text!r} has a search grid; grids are "
                "written on the outer spec's own parameters only."
            )
        return nested
    return _literal(text)


def _parse(text: str, depth: int) -> ScorerSpec:
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"Scorer spec {text!r} has no scorer name; write e.g. 'msp'.")
    if "," in name and name not in _REGISTRY.entries("scorer"):
        raise UnknownNameError(
            f"Scorer spec {text!r} is not one scorer: give several as separate specs "
            f"({' '.join(n.strip() for n in name.split(','))}), parameters after a ':'."
        )
    entry = get_entry("scorer", name)
    params: dict[str, Any] = {}
    grid: dict[str, tuple[Any, ...]] = {}
    for token in _split_top(rest, ",", text) if rest.strip() else []:
        key, eq, value = token.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"Scorer spec {text!r}: expected key=value, got {token.strip()!r}.")
        if not key:
            raise ValueError(f"Scorer spec {text!r}: a parameter name is empty in {token!r}.")
        if key in params or key in grid:
            raise ValueError(
                f"Scorer spec {text!r} sets {key!r} twice; give each parameter once (several "
                "values to search are written key=a|b)."
            )
        values = [_value(v, text, depth) for v in _split_top(value, "|", text)]
        if len(values) > 1:
            grid[key] = Grid(values)
        else:
            params[key] = values[0]
    check_param_names("scorer", name, entry.obj, {**params, **grid})
    first = {k: v[0] for k, v in grid.items()}
    scorer = create_scorer(name, **{**params, **first})
    return ScorerSpec(text.strip(), name, params, grid, entry, tuple(sorted(scorer.requirements())))


def parse_scorer_spec(spec: str | ScorerSpec) -> ScorerSpec:
    """Parse a scorer spec once (see :class:`ScorerSpec` for the grammar): its name is
    looked up in the registry, its parameter names and values checked (the first value of a
    grid stands for the others, which :func:`oodlens.bench.tune.candidates` checks).

    Values are Python literals where they parse (numbers, True/False/None), strings
    otherwise. ``a|b|c`` is a search grid (a :class:`Grid`), for ``oodlens bench --tune``.
    A :class:`ScorerSpec` is returned as it is.

    Raises:
        ValueError: the text breaks the grammar (naming the part), or is too long.
        UnknownNameError: no scorer has that name (close matches listed).
        TypeError, InvalidParameterError: a parameter the scorer does not take, or a value
            it does not allow.

    Example:
        >>> parse_scorer_spec("msp:temperature=2").params
        {'temperature': 2}
        >>> parse_scorer_spec("knn:k=10|50").grid
        {'k': Grid((10, 50))}
    """
    if isinstance(spec, ScorerSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"A scorer spec is a string such as 'msp:temperature=2', got {spec!r}.")
    if len(spec) > MAX_SPEC_LENGTH:
        raise ValueError(
            f"Scorer spec of {len(spec):,} characters ({spec[:40]!r}...) is longer than the "
            f"{MAX_SPEC_LENGTH} allowed; check what was passed as --scorers."
        )
    return _parse(spec, 0)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def create_scorer_from_spec(spec: str | ScorerSpec) -> Scorer:
    """``create_scorer`` from a spec string such as ``"msp:temperature=2"`` (no grid)."""
    return parse_scorer_spec(spec).create()


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


def get_protocol(name: str) -> Protocol:
    """A registered protocol: its ``id`` and ``ood`` sets (see the ``register_protocols``
    hook and :class:`~oodlens.protocol.Protocol`); unknown names list the valid ones."""
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
    body = spec_split(spec)[0]
    if kind not in kinds and (Path(body).exists() or len(kind) == 1):
        return load_folder_source(body, split, spec)
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
