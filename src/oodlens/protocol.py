"""Benchmark protocols as validated data: :class:`Protocol`, a named preset of an ID set and
OOD sets (e.g. OpenOOD v1.5's ``cifar10``), checked when it is registered, so a protocol
with a missing or wrong field is reported at plugin load (naming the field), never halfway
through a benchmark."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .params import InstanceOf, Interval, ListOf, Options, Text, validate_fields

__all__ = ["GROUPS", "RESERVED_SET_NAMES", "ProtocolSet", "Protocol"]

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

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "name": [Text()],
        "group": [Options(("id", *GROUPS))],
        "folders": [ListOf([Text()], single=True)],
        "torchvision": [Text(), None],
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        folders = self.folders if isinstance(self.folders, list | tuple) else (self.folders,)
        object.__setattr__(self, "folders", tuple(folders))
        if not self.folders and self.torchvision is None:
            raise ValueError(f"set {self.name!r} gives neither folders nor a torchvision spec.")


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
    #: published results to compare with, keyed as their source gives them (see the
    #: published-table issue); kept as given
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
