"""Benchmark protocols as validated data: :class:`Protocol`, a named preset of an ID set and
OOD sets (e.g. OpenOOD v1.5's ``cifar10``), checked when it is registered, so a protocol
with a missing or wrong field is reported at plugin load (naming the field), never halfway
through a benchmark."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .params import InstanceOf, Interval, ListOf, Options, Text, validate_fields

__all__ = [
    "GROUPS",
    "RESERVED_SET_NAMES",
    "ProtocolSet",
    "Protocol",
    "Published",
    "PublishedMethod",
    "PublishedValue",
]

#: OOD groups: near and far are averaged into their own rows; covariate and other are
#: reported per set only.
GROUPS = ("near", "far", "covariate", "other")

#: Names an OOD set may not take: the ID splits of a run and the aggregate rows (an OOD set
#: named ``id`` would replace the ID scores and make every AUROC 50%).
RESERVED_SET_NAMES = (
    "id",
    "id_train",
    "id_test",
    "id_val",
    "id_calib",
    "train",
    "test",
    "val",
    "calib",
    "near",
    "far",
    "mean",
    "aggregate",
)


def _from_mapping(cls: type, owner: str, data: Any) -> Any:
    """``cls(**data)`` for a mapping whose keys are ``cls``'s fields, or an error naming
    ``owner``, the missing and the unknown keys."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"{owner} must be a mapping, got {data!r}.")
    fields = cls.__dataclass_fields__
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in data]
    unknown = sorted(set(data) - set(fields))
    if missing or unknown:
        raise ValueError(
            f"{owner}: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    f"unknown key(s) {unknown}" if unknown else "",
                )
                if part
            )
            + f" (valid keys: {', '.join(fields)})."
        )
    try:
        return cls(**data)
    except ValueError as exc:
        raise ValueError(f"{owner}: {exc}") from None


@dataclass(frozen=True)
class ProtocolSet:
    """One set of a protocol: where to find it under a data root."""

    name: str  #: row label (OOD sets) or the ID set's name
    #: ``near``, ``far``, ``covariate`` or ``other`` (OOD sets); ``id`` for the ID set
    group: str = "id"
    #: candidate folders under the data root, first match wins (an ImageFolder; the ID
    #: folder holds ``train/`` and ``test/``, or ``val/``)
    folders: tuple[str, ...] = ()
    torchvision: str | None = None  #: a ``torchvision:`` spec used with ``--download``
    #: images in the split this set names (the dataset's own count, e.g. 10,000 for
    #: CIFAR-100's test split): a set found with fewer is a subset, and a published mean
    #: over it is compared as partial; None: not known
    size: int | None = None
    #: a dataset spec made from the ID set instead of a folder: ``{id}`` stands for the ID
    #: set's folder (e.g. ``corrupt:{id},seed=0@test``, corrupted copies of ID test)
    derived: str | None = None

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "name": [Text()],
        "group": [Options(("id", *GROUPS))],
        "folders": [ListOf([Text()], single=True)],
        "torchvision": [Text(), None],
        "size": [Interval(int, 1, None), None],
        "derived": [Text(), None],
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        folders = self.folders if isinstance(self.folders, list | tuple) else (self.folders,)
        object.__setattr__(self, "folders", tuple(folders))
        if not self.folders and self.torchvision is None and self.derived is None:
            raise ValueError(
                f"set {self.name!r} gives no folders, torchvision spec or derived spec."
            )
        if self.derived is not None and "{id}" not in self.derived:
            raise ValueError(
                f"set {self.name!r}: derived spec {self.derived!r} must contain {{id}} (the "
                "ID set's folder), e.g. 'corrupt:{id},seed=0@test'."
            )


@dataclass(frozen=True)
class Protocol:
    """A benchmark protocol: ``oodlens bench --protocol NAME`` finds its sets under
    ``--data-root``.

    Build one from a plugin's mapping with :meth:`from_mapping` (the registry does, when a
    plugin registers it).
    """

    name: str  #: the ``--protocol`` value
    id: ProtocolSet  #: the ID set
    ood: tuple[ProtocolSet, ...]  #: the OOD sets (at least one)
    description: str = ""  #: one line
    img_size: int | None = None  #: input size of the protocol's networks (None: the model's)
    #: the family whose table layout and metric conventions the protocol follows (``openood``:
    #: ``oodlens bench`` prints and writes OpenOOD's layout); empty: none
    family: str = ""
    #: published results to compare with (see :class:`Published`), kept as given; checked
    #: when the protocol is built, read through :attr:`results`
    published: Mapping[str, Any] = field(default_factory=dict)
    #: covariate-shifted ID sets (the same classes, another distribution), for the
    #: full-spectrum setting
    covariate_id: tuple[ProtocolSet, ...] = ()

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "name": [Text()],
        "id": [InstanceOf(ProtocolSet, "a set (name, folders, torchvision)")],
        "ood": [ListOf([InstanceOf(ProtocolSet, "a set")], min_length=1)],
        "description": [InstanceOf(str, "a string")],
        "img_size": [Interval(int, 1, None), None],
        "family": [InstanceOf(str, "a string")],
        "published": [InstanceOf(Mapping, "a mapping")],
        "covariate_id": [ListOf([InstanceOf(ProtocolSet, "a set")])],
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        object.__setattr__(self, "ood", tuple(self.ood))
        object.__setattr__(self, "covariate_id", tuple(self.covariate_id))
        names = [s.name for s in self.ood]
        if len(set(names)) != len(names):
            raise ValueError(f"protocol {self.name!r} names an OOD set twice: {names}.")
        reserved = [n for n in names if n.lower() in RESERVED_SET_NAMES or n.startswith("ood_val:")]
        if reserved:
            raise ValueError(
                f"protocol {self.name!r}: OOD set name(s) {reserved} are reserved for the ID "
                f"splits and aggregate rows ({', '.join(RESERVED_SET_NAMES)}, ood_val:...)."
            )
        if any(s.group == "id" for s in self.ood):
            raise ValueError(
                f"protocol {self.name!r}: every OOD set needs a group ({', '.join(GROUPS)})."
            )
        if self.published:
            self.results  # noqa: B018 (checked now, not halfway through a benchmark)

    @functools.cached_property
    def results(self) -> Published | None:
        """The published results (:class:`Published`), or None when there are none."""
        if not self.published:
            return None
        return Published.from_mapping(f"protocol {self.name!r}: published", self.published)

    @classmethod
    def from_mapping(cls, name: str, data: Any, description: str = "") -> Protocol:
        """A protocol from the mapping a plugin (or a YAML file) gives: ``id`` (a set
        without ``name``: it is the protocol's), ``ood`` (a list of sets with ``name``,
        ``group``, ``folders``, optional ``torchvision``), optional ``img_size``,
        ``description``, ``family``, ``published``, ``covariate_id``.

        Raises:
            ValueError: a missing, unknown or invalid key, named with its place (e.g.
                ``protocol 'x': ood[1]: missing ['name']``).

        Example:
            >>> p = Protocol.from_mapping("toy", {"id": {"folders": ["toy"]},
            ...     "ood": [{"name": "noise", "group": "far", "folders": ["noise"]}]})
            >>> p.ood[0].group, p.id.name
            ('far', 'toy')
        """
        if isinstance(data, Protocol):
            return data
        where = f"protocol {name!r}"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping with 'id' and 'ood', got {data!r}.")
        body = dict(data)
        body.setdefault("description", description)
        if "id" in body and isinstance(body["id"], Mapping):
            body["id"] = _from_mapping(ProtocolSet, f"{where}: id", {"name": name, **body["id"]})
        for key in ("ood", "covariate_id"):
            if key in body and isinstance(body[key], list | tuple):
                body[key] = tuple(
                    _from_mapping(ProtocolSet, f"{where}: {key}[{i}]", s)
                    for i, s in enumerate(body[key])
                )
        return _from_mapping(cls, where, {"name": name, **body})


_VALUE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:±\s*(\d+(?:\.\d+)?))?\s*$")


@dataclass(frozen=True)
class PublishedValue:
    """One published number as its source writes it: ``"88.03 ± 0.25"`` (mean ± std over
    the source's checkpoints) or ``"76.02"`` (one run: no std), in percent."""

    mean: float
    std: float | None
    text: str

    @classmethod
    def parse(cls, where: str, text: Any) -> PublishedValue | None:
        """The value of a cell; None for an empty one (``null``, ``"/"``)."""
        if text is None or (isinstance(text, str) and text.strip() in ("", "/")):
            return None
        match = _VALUE.match(str(text))
        if not match:
            raise ValueError(f"{where}: {text!r} is not a published value ('88.03 ± 0.25').")
        std = None if match[2] is None else float(match[2])
        return cls(float(match[1]), std, str(text).strip())


@dataclass(frozen=True)
class PublishedMethod:
    """A method of the published table and the oodlens scorer spec that runs the same
    method with the same settings (None: oodlens has no such scorer)."""

    name: str
    ours: str | None
    settings: str = ""  #: how the source runs it, when it has settings


@dataclass(frozen=True)
class Published:
    """Published results of a protocol (e.g. OpenOOD v1.5's leaderboard): per network,
    setting (``ood``; ``fsood`` for the full-spectrum setting) and method, the near-OOD and
    far-OOD AUROC means and the ID accuracy, exactly as published; the source; and the name
    map from the source's methods to oodlens scorer specs."""

    source: Mapping[str, str]
    training: str
    methods: Mapping[str, PublishedMethod]
    #: network -> {"note": str, setting -> {method -> {"near"|"far"|"id_accuracy": value}}}
    networks: Mapping[str, Mapping[str, Any]]

    SETTINGS: ClassVar[tuple[str, ...]] = ("ood", "fsood")

    @classmethod
    def from_mapping(cls, where: str, data: Mapping[str, Any]) -> Published:
        """Check and read a ``published:`` mapping (``source``, ``training``, ``methods``,
        ``networks``); an error names the key."""
        unknown = sorted(set(data) - {"source", "training", "methods", "networks"})
        missing = [k for k in ("source", "methods", "networks") if k not in data]
        if unknown or missing:
            raise ValueError(f"{where}: missing {missing}, unknown key(s) {unknown}.")
        source = data["source"]
        if not isinstance(source, Mapping) or not {"repository", "file"} <= set(source):
            raise ValueError(f"{where}: source needs repository and file (and a commit).")
        methods = {}
        for name, entry in dict(data["methods"]).items():
            if not isinstance(entry, Mapping) or set(entry) - {"ours", "settings"}:
                raise ValueError(f"{where}: methods.{name} takes ours (a spec or null), settings.")
            methods[str(name)] = PublishedMethod(
                str(name), entry.get("ours"), str(entry.get("settings", ""))
            )
        networks: dict[str, dict[str, Any]] = {}
        for net, body in dict(data["networks"]).items():
            if not isinstance(body, Mapping):
                raise ValueError(f"{where}: networks.{net} must be a mapping.")
            bad = sorted(set(body) - {"note", *cls.SETTINGS})
            if bad:
                raise ValueError(f"{where}: networks.{net}: unknown key(s) {bad}.")
            parsed: dict[str, Any] = {"note": str(body.get("note", ""))}
            for setting in cls.SETTINGS:
                rows = {}
                for method, cells in dict(body.get(setting) or {}).items():
                    here = f"{where}: networks.{net}.{setting}.{method}"
                    if method not in methods:
                        raise ValueError(f"{here}: the method is not in methods (the name map).")
                    if not isinstance(cells, Mapping) or set(cells) - {
                        "near",
                        "far",
                        "id_accuracy",
                    }:
                        raise ValueError(f"{here}: give near, far and id_accuracy.")
                    rows[str(method)] = {
                        key: PublishedValue.parse(f"{here}.{key}", cells.get(key))
                        for key in ("near", "far", "id_accuracy")
                    }
                if rows:
                    parsed[setting] = rows
            networks[str(net)] = parsed
        if not networks:
            raise ValueError(f"{where}: no networks.")
        return cls(dict(source), str(data.get("training", "")), methods, networks)

    def network(self, name: str | None = None) -> str:
        """The network named ``name`` (case and punctuation ignored), or the first one."""
        if not name:
            return next(iter(self.networks))
        key = re.sub(r"[^a-z0-9]", "", name.lower())
        for net in self.networks:
            if re.sub(r"[^a-z0-9]", "", net.lower()) == key:
                return net
        raise ValueError(
            f"No published results for network {name!r}; published: {', '.join(self.networks)}."
        )
