"""Benchmark configuration: OOD sets, the frozen :class:`BenchmarkConfig`, config files.

Every field of :class:`BenchmarkConfig` is declared with its constraints
(:attr:`BenchmarkConfig.parameter_constraints`, the mechanism scorers use, see
:mod:`oodlens.params`) and checked when the config is built, so a wrong type or value in a
YAML file, on the command line or in code is one line naming the field, the value and what
is allowed, before any work. Checks that involve several fields follow, explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..datasets import spec_split
from ..errors import InvalidParameterError
from ..metrics import CONVENTIONS
from ..options import ExtractOptions
from ..params import Boolean, InstanceOf, Interval, ListOf, Options, Text, validate_fields
from ..protocol import GROUPS, RESERVED_SET_NAMES, ProtocolSet
from ..registry import ScorerSpec, get_protocol, list_datasets, list_scorers, parse_scorer_spec
from ..train import TrainConfig

__all__ = [
    "resolve_protocol",
    "GROUPS",
    "RESERVED_SET_NAMES",
    "OODSet",
    "BenchmarkConfig",
    "load_config",
    "read_config",
    "checkpoint_defaults",
    "expand_scorers",
    "parse_ood_spec",
    "parse_checkpoint",
]


@dataclass(frozen=True)
class OODSet:
    """One OOD dataset of a benchmark."""

    name: str  #: row label in the tables
    spec: str  #: dataset spec (see oodlens.datasets)
    group: str = "far"  #: "near", "far", "covariate" (reported, not averaged) or "other"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"An OOD set needs a non-empty name (spec {self.spec!r}).")
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ValueError(f"OOD set {self.name!r} needs a non-empty dataset spec.")
        if self.group not in GROUPS:
            raise ValueError(f"OOD set {self.name!r}: group {self.group!r} is not one of {GROUPS}.")
        if self.name.lower() in RESERVED_SET_NAMES or self.name.startswith("ood_val:"):
            raise ValueError(
                f"OOD set name {self.name!r} is reserved for the ID splits and aggregate rows "
                f"({', '.join(RESERVED_SET_NAMES)}, ood_val:...); name the set after its data, "
                f"e.g. --ood {self.group}:my_{self.name.replace(':', '_')}={self.spec}."
            )

    @classmethod
    def coerce(cls, value: Any) -> OODSet:
        """An OOD set from an ``OODSet``, a mapping with ``name``, ``spec`` and ``group``
        (a config file), or the text ``[GROUP:]NAME=SPEC`` (see :func:`parse_ood_spec`)."""
        if isinstance(value, OODSet):
            return value
        if isinstance(value, str):
            return parse_ood_spec(value)
        unknown = sorted(set(value) - {"name", "spec", "group"})
        if unknown or not {"name", "spec"} <= set(value):
            raise ValueError(
                f"OOD set {dict(value)!r}: give name, spec and (optionally) group"
                + (f"; unknown key(s) {unknown}" if unknown else "")
                + "."
            )
        return cls(**value)


def parse_ood_spec(text: str) -> OODSet:
    """An OOD set from ``[GROUP:]NAME=SPEC`` or ``GROUP=SPEC`` (name from the spec's folder).

    Example:
        >>> parse_ood_spec("near:cifar100=data/cifar100")
        OODSet(name='cifar100', spec='data/cifar100', group='near')
    """
    usage = f"write NAME=SPEC, GROUP=SPEC or GROUP:NAME=SPEC (GROUP: {', '.join(GROUPS)})"
    lhs, sep, spec = text.partition("=")
    if not sep or not spec.strip() or not lhs.strip():
        raise ValueError(f"--ood {text!r}: {usage}.")
    if lhs in GROUPS:
        base = spec_split(spec)[0].rstrip("/")
        name = Path(base).name if ("/" in base or Path(base).exists()) else base
        return OODSet(name, spec, lhs)
    group, colon, name = lhs.partition(":")
    if colon:
        if group not in GROUPS:
            raise ValueError(f"--ood {text!r}: group {group!r} is not one of {', '.join(GROUPS)}.")
        if not name.strip():
            raise ValueError(f"--ood {text!r}: the name after {group + ':'!r} is empty; {usage}.")
        return OODSet(name, spec, group)
    return OODSet(lhs, spec, "far")


_CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def parse_checkpoint(text: str) -> tuple[str | None, str]:
    """``(name, path)`` of a checkpoint entry: ``NAME=PATH`` names the run (several paths
    under one name are seeds of one network, averaged in the summary), a plain ``PATH``
    leaves it unnamed.

    Example:
        >>> parse_checkpoint("mine=runs/seed0.safetensors")
        ('mine', 'runs/seed0.safetensors')
        >>> parse_checkpoint("runs/seed0.safetensors")
        (None, 'runs/seed0.safetensors')
    """
    name, sep, path = text.partition("=")
    if sep and _CHECKPOINT_NAME.fullmatch(name) and path and not Path(text).exists():
        return name, path
    return None, text


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


#: TrainConfig fields a benchmark sets itself (models, id, img_size, seeds, the splits).
_SET_BY_RUN = ("model", "data", "img_size", "seed", "holdout")

_OOD_ITEM = InstanceOf((OODSet, Mapping, str), "an OOD set (NAME=SPEC, or name, spec, group)")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything a benchmark run depends on; loadable from YAML or TOML (:func:`load_config`).

    The defaults are the embedded demo: resnet18 at 32 px trained from scratch on digits 0-4,
    OOD = digits 5-9 (near) and Gaussian noise (far), every installed scorer. Every field is
    checked against :attr:`parameter_constraints` when the config is built.

    Example:
        >>> BenchmarkConfig(img_size="abc")
        Traceback (most recent call last):
        ...
        oodlens.errors.InvalidParameterError: BenchmarkConfig: img_size='abc' is not valid; it must be an int in [1, inf) or None.
    """

    id: str = "digits:0-4"  #: ID dataset spec: ``@train`` fits the scorers, ``@test`` is scored
    ood: tuple[OODSet, ...] = (
        OODSet("digits5-9", "digits:5-9", "near"),
        OODSet("noise", "noise:gaussian,n=500,size=32", "far"),
    )  #: OOD sets, never used for fitting
    #: timm model names (one for every checkpoint, or one name for them all)
    models: tuple[str, ...] = ("resnet18",)
    #: checkpoints, ``PATH`` or ``NAME=PATH`` (one NAME for several paths: seeds of one
    #: network, averaged); rows are named by NAME, by the model when it has one checkpoint,
    #: else by model and file; empty: train here (or pretrained)
    checkpoints: tuple[str, ...] = ()
    pretrained: bool = False  #: use timm's pretrained weights with their own head (internet)
    seeds: tuple[int, ...] = (0,)  #: training seeds (models trained here only)
    #: TrainConfig overrides for models trained here
    train: Mapping[str, Any] = field(default_factory=lambda: {"epochs": 10, "hflip": False})
    #: "name" or "name:key=value,..."; "all" (or an empty list) = every installed output-based
    #: scorer; "all+model" adds the model-aware ones (own passes over the images: on a large
    #: set they take longer than everything else, so they run only on request)
    scorers: tuple[str, ...] = ("all", "logit_kde:mode=class_conditional")
    img_size: int | None = 32  #: input size (None: the model's default)
    device: str = "cpu"  #: "cpu", "cuda", "mps" or "auto"
    batch_size: int = 256  #: extraction batch size
    #: DataLoader workers; None: from the CPU count (0 with 2 cores or fewer)
    num_workers: int | None = None
    precision: str = "fp32"  #: extraction autocast precision: "fp32", "bf16" or "fp16"
    channels_last: bool = False  #: extraction in channels-last memory format
    #: where images are resized and normalised: "pil" (per image, on the workers), "device"
    #: (in batches on the device) or "auto" ("device" on CUDA, else "pil")
    preprocess: str = "auto"
    #: storage of the cached features: "float32" or "float16" (half the disk and memory)
    features_dtype: str = "float32"
    cache_dir: str | None = None  #: default: $OODLENS_CACHE_DIR or ~/.cache/oodlens
    use_cache: bool = True  #: False: extract (and train) again, store nothing
    threshold: float | None = None  #: an extra fixed operating threshold (e.g. density 0.04)
    #: operating threshold: accept this share of the ID ``calib`` split (never the test rows)
    id_acceptance: float = 0.95
    #: metric definitions: "oodlens" or "openood" (OpenOOD v1.5's evaluator; see metrics)
    convention: str = "oodlens"
    #: held-out ID splits the network never saw, both excluded from fitting and from the
    #: test rows: carved out of ID test for a given checkpoint (or pretrained weights), out
    #: of the training split (before training) for a model trained here
    val_fraction: float = 0.1  #: share for ``val`` (tuning; scorers that fit on held-out data)
    calib_fraction: float = 0.1  #: share for ``calib`` (the operating threshold)
    #: OOD validation sets for --tune; never among the test rows
    ood_val: tuple[OODSet, ...] = ()
    tune: bool = False  #: search each scorer's tuning grid on ID val + OOD val (by AUROC)
    #: conformal levels: per scorer and OOD set, the realised ID false-rejection rate and the
    #: OOD rejection rate (power) of split-conformal p-values calibrated on ``calib``
    alphas: tuple[float, ...] = ()
    fdr: float | None = None  #: Benjamini-Hochberg level on batches of ID test + each OOD set
    #: bootstrap resamples for 95% intervals of auroc, fpr95, aupr_in/out (0: none)
    bootstrap: int = 0
    protocol: str | None = None  #: the protocol preset the sets came from (informational)
    #: protocol sets that were not found (name, group, where to put them), recorded
    missing_sets: tuple[Mapping[str, Any], ...] = ()
    skip_corrupt: bool = False  #: skip unreadable images (listed in results) instead of failing
    attention: bool = False  #: also measure Grad-CAM attention areas (see oodlens.diagnose)
    attention_scorer: str | None = None  #: whose threshold splits ID errors (default logit_kde)
    attention_samples: int = 200  #: images explained per set (every ID error is kept)
    attention_layer: str | None = None  #: Grad-CAM layer (default: automatic, see GradCAM)
    #: a folder to save one detector per scorer and network into (``--save-detectors``),
    #: from the run's own fitted scorers; decided at the first alpha (else 0.05) or at the
    #: fixed threshold
    save_detectors: str | None = None
    #: embed the weights in saved detectors even for a given checkpoint (they are always
    #: embedded for a network the run trained itself)
    embed_weights: bool = False
    #: run at ``img_size`` even where a checkpoint records another input size (by default
    #: that contradiction is an error: the network would see images at a size it was not
    #: trained at)
    override_checkpoint: bool = False
    #: compare with the protocol's published results (``--compare-published``): the
    #: published network to compare with ("" = the first the protocol publishes); needs a
    #: protocol with published results and the ``openood`` convention
    compare_published: str | None = None
    #: where JPEGs are decoded (``--decode``): "cpu" (PIL on the workers) or "device" (in
    #: batches on CUDA; falls back to "cpu" without it); see :class:`ExtractOptions`
    decode: str = "cpu"
    #: stages whose pooled features are recorded beside the penultimate ones (``--stages``;
    #: the scorers that read stages add theirs), see :class:`ExtractOptions`
    stages: tuple[int, ...] = ()
    #: stages whose Gram-matrix statistics are recorded (``--gram-stages``; ``gram`` adds its
    #: own)
    gram_stages: tuple[int, ...] = ()
    #: full-spectrum OOD (``--fsood``, OpenOOD's FS-OOD): the OOD sets of group
    #: ``covariate`` (covariate-shifted ID: the ID classes under another distribution) count
    #: as in-distribution in a second table, beside the usual one
    fsood: bool = False

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "id": [Text()],
        "ood": [ListOf([_OOD_ITEM])],
        "models": [ListOf([Text()], min_length=1, single=True)],
        "checkpoints": [ListOf([Text(path=True)], single=True)],
        "pretrained": [Boolean()],
        "seeds": [ListOf([Interval(int, 0, None)], min_length=1, single=True)],
        "train": [InstanceOf(Mapping, "a mapping of TrainConfig fields")],
        "scorers": [ListOf([Text()], single=True)],
        **{k: ExtractOptions.parameter_constraints[k] for k in ExtractOptions.ROW_FIELDS},
        **{k: ExtractOptions.parameter_constraints[k] for k in ExtractOptions.RUN_FIELDS},
        "cache_dir": [Text(path=True), None],
        "use_cache": [Boolean()],
        "threshold": [Interval(float, None, None), None],
        "id_acceptance": [Interval(float, 0, 1, closed="right")],
        "convention": [Options(CONVENTIONS)],
        "val_fraction": [Interval(float, 0, 0.5, closed="left")],
        "calib_fraction": [Interval(float, 0, 0.5, closed="neither")],
        "ood_val": [ListOf([_OOD_ITEM])],
        "tune": [Boolean()],
        "alphas": [ListOf([Interval(float, 0, 1, closed="neither")], single=True)],
        "fdr": [Interval(float, 0, 1, closed="neither"), None],
        "bootstrap": [Options((0,)), Interval(int, 10, None)],
        "protocol": [Text(), None],
        "missing_sets": [ListOf([InstanceOf(Mapping, "a mapping")])],
        "attention": [Boolean()],
        "attention_scorer": [Text(), None],
        "attention_samples": [Interval(int, 1, None)],
        "attention_layer": [Text(), None],
        "save_detectors": [Text(path=True), None],
        "embed_weights": [Boolean()],
        "override_checkpoint": [Boolean()],
        "compare_published": [InstanceOf(str, "a network name"), None],
        "fsood": [Boolean()],
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        # the declared forms, normalised: lists (or one lone value) become tuples, paths
        # become strings, OOD sets given as mappings or text become OODSet
        normal: dict[str, Any] = {
            name: _as_tuple(getattr(self, name))
            for name in ("models", "seeds", "scorers", "alphas")
        }
        normal["checkpoints"] = tuple(os.fspath(c) for c in _as_tuple(self.checkpoints))
        normal["ood"] = tuple(OODSet.coerce(o) for o in self.ood)
        normal["ood_val"] = tuple(OODSet.coerce(o) for o in self.ood_val)
        normal["missing_sets"] = tuple(dict(m) for m in self.missing_sets)
        for name in ("cache_dir", "save_detectors"):
            if getattr(self, name) is not None:
                normal[name] = os.fspath(getattr(self, name))
        for name, value in normal.items():
            object.__setattr__(self, name, value)
        self._check_fields_together()

    def _check_fields_together(self) -> None:
        """The checks that involve several fields."""
        if self.checkpoints and len(self.models) not in (1, len(self.checkpoints)):
            raise ValueError(
                f"Give one --model per --checkpoint, or one --model for them all: "
                f"{len(self.models)} model(s), {len(self.checkpoints)} checkpoint(s)."
            )
        if not self.checkpoints and len(set(self.models)) != len(self.models):
            raise ValueError(
                f"models lists a model twice {list(self.models)}; a model trained here (or "
                "pretrained) is one row per seed: give it once, with seeds."
            )
        names = [o.name for o in self.ood]
        if len(set(names)) != len(names):
            raise ValueError(f"OOD set names must be unique: {names}.")
        test_names = {o.name for o in self.ood} | {o.spec for o in self.ood}
        clash = [o.name for o in self.ood_val if o.name in test_names or o.spec in test_names]
        if clash:
            raise ValueError(
                f"OOD validation set(s) {clash} are also test sets; an OOD validation set must "
                "never appear in the test rows. Give --ood-val a set that is not among --ood."
            )
        if self.tune and not self.ood_val:
            raise ValueError(
                "tune=True (--tune) searches on an OOD validation set: give one with "
                "--ood-val NAME=SPEC (a set that is not among the test sets)."
            )
        if self.compare_published is not None:
            if self.protocol is None:
                raise ValueError(
                    "compare_published (--compare-published) compares with a protocol's "
                    "published results: give --protocol NAME."
                )
            if self.convention != "openood":
                raise ValueError(
                    "compare_published (--compare-published) compares with OpenOOD's "
                    "published numbers: use convention 'openood' (--convention openood)."
                )
        if self.fsood:
            groups = {o.group for o in self.ood}
            if "covariate" not in groups:
                raise ValueError(
                    "fsood (--fsood) counts covariate-shifted ID sets as in-distribution: give "
                    "one with --ood covariate:NAME=SPEC (e.g. covariate:cifar10c="
                    "corrupt:data/cifar10@test), or a protocol that lists them."
                )
            if not groups - {"covariate"}:
                raise ValueError(
                    "fsood (--fsood) needs at least one OOD set that is not covariate."
                )
            if self.convention != "openood":
                raise ValueError(
                    "fsood (--fsood) is OpenOOD's full-spectrum setting, with OpenOOD's metric "
                    "definitions: use convention 'openood' (--fsood on the command line sets it)."
                )
        if self.tune and self.val_fraction == 0.0:
            raise ValueError("tune=True (--tune) needs an ID val split: val_fraction > 0.")
        valid = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _SET_BY_RUN]
        unknown = sorted(set(self.train) - set(valid))
        if unknown:
            raise InvalidParameterError(
                f"BenchmarkConfig.train: unknown training option(s) {unknown}; valid: {valid} "
                f"({', '.join(_SET_BY_RUN)} come from the benchmark's own fields)."
            )
        try:
            TrainConfig(**self.train)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"BenchmarkConfig.train: {exc}") from None

    def extract_options(self) -> ExtractOptions:
        """The extraction options of this run (the same fields, as one object)."""
        fields = (*ExtractOptions.ROW_FIELDS, *ExtractOptions.RUN_FIELDS)
        return ExtractOptions(**{name: getattr(self, name) for name in fields})

    @classmethod
    def from_protocol(
        cls,
        name: str,
        data_root: str | os.PathLike[str] | None = None,
        download: bool = False,
        strict: bool = False,
        fsood: bool = False,
        **overrides: Any,
    ) -> BenchmarkConfig:
        """The config of a registered protocol (e.g. OpenOOD's ``"cifar10"``), its sets
        found under ``data_root`` (see :func:`resolve_protocol`; with ``fsood``, its
        covariate-shifted ID sets too, under OpenOOD's convention); ``overrides`` replace fields (an ``ood`` override
        adds sets, or replaces those with the same name)."""
        resolved = resolve_protocol(name, data_root, download=download, strict=strict, fsood=fsood)
        if fsood:  # OpenOOD's setting, OpenOOD's metric definitions
            overrides.setdefault("convention", "openood")
        extra = tuple(overrides.pop("ood", ()))
        names = {o.name for o in extra}
        resolved["ood"] = tuple(o for o in resolved["ood"] if o.name not in names) + extra
        resolved["missing_sets"] = tuple(
            m for m in resolved["missing_sets"] if m["name"] not in names
        )
        return cls(**{**resolved, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"] = dict(self.train)
        return d


#: The placeholders a config file may use in its values, and where their values come from.
_PLACEHOLDERS = {
    "data_root": ("--data-root", "OODLENS_DATA_ROOT"),
    "models_root": ("--models-root", "OODLENS_MODELS_ROOT"),
}


def _substitute(data: Any, values: Mapping[str, str]) -> Any:
    """``data`` with ``{data_root}`` and ``{models_root}`` replaced inside its string values
    (after parsing, so a path holding ``#``, ``:`` or quotes stays one value)."""
    if isinstance(data, str):
        for key, value in values.items():
            data = data.replace("{" + key + "}", value)
        return data
    if isinstance(data, Mapping):
        return {k: _substitute(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute(v, values) for v in data]
    return data


def _used(data: Any, key: str) -> bool:
    if isinstance(data, str):
        return "{" + key + "}" in data
    if isinstance(data, Mapping):
        return any(_used(v, key) for v in data.values())
    if isinstance(data, list):
        return any(_used(v, key) for v in data)
    return False


def _placeholder_values(
    path: Path,
    data: Any,
    data_root: str | os.PathLike[str] | None,
    models_root: str | os.PathLike[str] | None,
) -> dict[str, str]:
    values: dict[str, str] = {}
    root = data_root if data_root is not None else os.environ.get("OODLENS_DATA_ROOT")
    if _used(data, "data_root"):
        if root is None:
            raise ValueError(
                f"Config {str(path)!r} uses {{data_root}}: pass --data-root DIR (or set "
                "OODLENS_DATA_ROOT)."
            )
        if not Path(root).is_dir():
            raise FileNotFoundError(f"Data root {str(root)!r} does not exist.")
        values["data_root"] = str(Path(root).resolve())
    if _used(data, "models_root"):
        models = models_root if models_root is not None else os.environ.get("OODLENS_MODELS_ROOT")
        if models is None and root is not None:
            models = Path(root).resolve().parent / "models"
        if models is None or not Path(models).is_dir():
            raise FileNotFoundError(
                f"Config {str(path)!r} uses {{models_root}}: pass --models-root DIR (or set "
                f"OODLENS_MODELS_ROOT); tried {str(models)!r}."
            )
        values["models_root"] = str(Path(models).resolve())
    return values


def load_config(
    path: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    models_root: str | os.PathLike[str] | None = None,
) -> BenchmarkConfig:
    """Read a :class:`BenchmarkConfig` from ``.yaml``/``.yml`` or ``.toml``.

    ``{data_root}`` in the file's values is replaced by ``data_root`` (or
    ``$OODLENS_DATA_ROOT``), and ``{models_root}`` by ``models_root`` (or
    ``$OODLENS_MODELS_ROOT``, else the ``models`` folder beside the data root), so a config
    can point at any copy of its data and checkpoints. The substitution happens after the
    file is parsed, inside string values only: a path holding ``#`` or ``:`` stays one value.
    The options may sit at the top level or under a ``benchmark:`` key. Syntax errors and bad
    values are reported with the file name (and line, for syntax errors).
    """
    data = read_config(path, data_root, models_root)
    try:
        return BenchmarkConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Config {str(path)!r}: {exc}") from None


def read_config(
    path: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    models_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The options a config file sets (see :func:`load_config`), by name, placeholders
    substituted; their values are checked when a :class:`BenchmarkConfig` is built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"Config {str(path)!r} is not valid YAML{at}: {problem}.") from None
    elif path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"Config {str(path)!r} is not valid TOML: {exc}.") from None
    else:
        raise ValueError(f"Config {str(path)!r}: use a .yaml, .yml or .toml file.")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"Config {str(path)!r} must hold a mapping of options.")
    if "benchmark" in data:
        data = data["benchmark"]
        if not isinstance(data, dict):
            raise ValueError(
                f"Config {str(path)!r}: 'benchmark:' must hold a mapping of options, got "
                f"{data!r}; write the options under it, indented, or at the top level."
            )
    valid = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    unknown = set(data) - valid
    if unknown:
        raise ValueError(
            f"Config {str(path)!r}: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}."
        )
    return _substitute(data, _placeholder_values(path, data, data_root, models_root))


def _trained_on(stored: Any) -> str | None:
    """The ID dataset spec an oodlens checkpoint records (``oodlens train --data``)."""
    train = stored.extra.get("train") if stored is not None else None
    data = train.get("data") if isinstance(train, Mapping) else None
    return data if isinstance(data, str) and data.strip() else None


def _check_here(spec: str, checkpoint: str) -> None:
    """Refuse a recorded dataset spec whose folder is not on this machine."""
    body = spec_split(spec)[0]
    if body.split(":", 1)[0] in list_datasets():
        return
    if not Path(body).expanduser().exists():
        raise FileNotFoundError(
            f"Checkpoint {checkpoint!r} was trained on {spec!r}, which is not on this machine: "
            "pass --id SPEC (where that data is here: a folder with train/ and test/)."
        )


def checkpoint_defaults(
    cfg: BenchmarkConfig, given: Collection[str] = ()
) -> tuple[BenchmarkConfig, dict[str, Any]]:
    """``cfg`` with what its checkpoints record as the default of every field not in
    ``given`` (the fields the user set: on the command line or in a config file): the
    model name (``models``), the input size (``img_size``) and the ID dataset (``id``),
    and the fields so taken.

    A checkpoint that does not record its model or its ID data (one not written by
    ``oodlens train``) needs them given: the error names the option. A given value that
    contradicts a checkpoint is refused later, when the run starts (see
    :attr:`BenchmarkConfig.override_checkpoint`).
    """
    if not cfg.checkpoints:
        return cfg, {}
    from ..backbones import read_model_config

    paths = [parse_checkpoint(text)[1] for text in cfg.checkpoints]
    stored = {path: read_model_config(path) for path in dict.fromkeys(paths)}
    taken: dict[str, Any] = {}
    if "models" not in given:
        blank = [p for p in paths if stored[p] is None]
        if blank:
            raise ValueError(
                f"Checkpoint {blank[0]!r} does not record its model (it was not written by "
                "oodlens train): pass --model NAME (the timm model it holds)."
            )
        names = tuple(stored[p].model for p in paths)
        taken["models"] = names[:1] if len(set(names)) == 1 else names
    sizes = {p: s.img_size for p, s in stored.items() if s is not None and s.img_size}
    if "img_size" not in given and sizes:
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"The checkpoints record different input sizes {sizes}; a run has one input "
                "size: bench them in separate runs."
            )
        taken["img_size"] = next(iter(sizes.values()))
    if "id" not in given:
        specs = {p: _trained_on(stored[p]) for p in paths}
        blank = [p for p, spec in specs.items() if spec is None]
        if blank:
            raise ValueError(
                f"Checkpoint {blank[0]!r} does not record the data it was trained on: pass "
                "--id SPEC (the ID dataset: a folder with train/ and test/, or e.g. digits:0-4)."
            )
        if len(set(specs.values())) > 1:
            raise ValueError(
                f"The checkpoints were trained on different data {specs}: pass --id SPEC."
            )
        taken["id"] = next(iter(specs.values()))
        _check_here(taken["id"], paths[0])
    return dataclasses.replace(cfg, **taken), taken


def expand_scorers(specs: Sequence[str | ScorerSpec]) -> list[ScorerSpec]:
    """Scorer specs, each parsed once (:func:`~oodlens.registry.parse_scorer_spec`), with
    ``"all"`` (or nothing) replaced by every installed output-based scorer that reads only
    the penultimate outputs, and ``"all+model"`` by every installed scorer, including the
    model-aware ones (which run in their own passes over the images) and those on earlier
    stages (whose features make the extraction dearer), in order, without duplicates."""
    out: dict[str, ScorerSpec] = {}
    for text in specs or ("all",):
        if text in ("all", "all+model"):
            parsed = [parse_scorer_spec(n) for n in list_scorers()]
            parsed = [
                p for p in parsed if text == "all+model" or not (p.model_aware or p.reads_stages)
            ]
        else:
            parsed = [parse_scorer_spec(text)]
        for spec in parsed:
            out.setdefault(spec.text, spec)
    return list(out.values())


def resolve_protocol(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    strict: bool = False,
    fsood: bool = False,
) -> dict[str, Any]:
    """Find a protocol's sets under ``data_root`` (default ``$OODLENS_DATA_ROOT``).

    Each set is the first of its listed folders that exists (an ImageFolder; the ID folder
    holds ``train/`` and ``test/``, or ``val/``); with ``download``, a set no folder holds
    comes from its torchvision dataset when torchvision has it. Sets still missing are
    skipped and listed (with where to put them) in ``missing_sets``, or, with ``strict``, an
    error. With ``fsood``, the protocol's covariate-shifted ID sets join the OOD sets as group
    ``covariate`` (a ``derived`` set is made from the ID folder, e.g. corrupted copies of ID
    test). Returns ``BenchmarkConfig`` fields: ``id``, ``ood``, ``img_size``, ``protocol``,
    ``missing_sets``, ``fsood``.
    """
    protocol = get_protocol(name)
    root_text = data_root if data_root is not None else os.environ.get("OODLENS_DATA_ROOT")
    if root_text is None:
        raise ValueError(
            f"--protocol {name} looks for its sets under a data root: pass --data-root DIR "
            "(or set OODLENS_DATA_ROOT)."
        )
    root = Path(root_text).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} does not exist.")

    def find(entry: ProtocolSet) -> str | None:
        for folder in entry.folders:
            if (root / folder).is_dir():
                return str((root / folder).resolve())
        return entry.torchvision if download else None

    id_spec = find(protocol.id)
    if id_spec is None:
        where = ", ".join(str(root / f) for f in protocol.id.folders)
        raise FileNotFoundError(
            f"Protocol {name!r}: its ID set was not found; put it (with train/ and test/ "
            f"sub-folders) at one of: {where}"
            + (
                " (or pass --download to fetch it with torchvision)."
                if protocol.id.torchvision
                else "."
            )
        )
    if fsood and not protocol.covariate_id:
        raise ValueError(
            f"Protocol {name!r} lists no covariate-shifted ID sets for --fsood (OpenOOD v1.5 has "
            "none for CIFAR-100); add one with --ood covariate:NAME=SPEC."
        )
    ood, missing = [], []
    for entry in (*protocol.ood, *(protocol.covariate_id if fsood else ())):
        spec = entry.derived.replace("{id}", id_spec) if entry.derived else find(entry)
        if spec is not None:
            ood.append(OODSet(entry.name, spec, entry.group))
            continue
        missing.append(
            {
                "name": entry.name,
                "group": entry.group,
                "put_it_at": [str(root / f) for f in entry.folders],
                "torchvision": entry.torchvision,
            }
        )
    if missing and strict:
        lines = "; ".join(f"{m['name']} ({m['group']}): {m['put_it_at'][0]}" for m in missing)
        raise FileNotFoundError(f"Protocol {name!r} (--strict): missing set(s): {lines}.")
    if not ood:
        raise FileNotFoundError(
            f"Protocol {name!r}: none of its OOD sets was found under {str(root)!r}."
        )
    return {
        "id": id_spec,
        "ood": tuple(ood),
        "img_size": protocol.img_size,
        "protocol": name,
        "missing_sets": tuple(missing),
        "fsood": fsood,
    }
