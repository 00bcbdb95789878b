"""Benchmark configuration: OOD sets, the frozen :class:`BenchmarkConfig`, config files."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import CONVENTIONS
from ..options import PRECISIONS, PREPROCESS_MODES
from ..outputs import FEATURE_DTYPES
from ..registry import create_scorer, get_protocol, list_scorers
from ..train import TrainConfig

__all__ = [
    "resolve_protocol",
    "GROUPS",
    "OODSet",
    "BenchmarkConfig",
    "load_config",
    "expand_scorers",
    "parse_ood_spec",
]

#: OOD groups: near and far are averaged into their own rows; covariate and other are
#: reported per set only.
GROUPS = ("near", "far", "covariate", "other")


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
        base = spec.rsplit("@", 1)[0].rstrip("/")
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


def _tuple_of(name: str, value: Any, kind: type) -> tuple:
    items = (value,) if isinstance(value, str | int) else value
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise TypeError(f"BenchmarkConfig.{name} must be a list of {kind.__name__}, got {value!r}.")
    items = tuple(items)
    bad = [v for v in items if not isinstance(v, kind) or isinstance(v, bool)]
    if bad:
        raise TypeError(f"BenchmarkConfig.{name} must hold {kind.__name__} values, got {bad[:3]}.")
    return items


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything a benchmark run depends on; loadable from YAML or TOML (:func:`load_config`).

    The defaults are the embedded demo: resnet18 at 32 px trained from scratch on digits 0-4,
    OOD = digits 5-9 (near) and Gaussian noise (far), every installed scorer.
    """

    id: str = "digits:0-4"  #: ID dataset spec: ``@train`` fits the scorers, ``@test`` is scored
    ood: tuple[OODSet, ...] = (
        OODSet("digits5-9", "digits:5-9", "near"),
        OODSet("noise", "noise:gaussian,n=500,size=32", "far"),
    )  #: OOD sets, never used for fitting
    models: tuple[str, ...] = ("resnet18",)  #: timm model names
    #: one checkpoint per model; empty: train here (or pretrained)
    checkpoints: tuple[str, ...] = ()
    pretrained: bool = False  #: use timm's pretrained weights with their own head (internet)
    seeds: tuple[int, ...] = (0,)  #: training seeds (models trained here only)
    #: TrainConfig overrides for models trained here
    train: Mapping[str, Any] = field(default_factory=lambda: {"epochs": 10, "hflip": False})
    #: "name" or "name:key=value,..."; "all" (or an empty list) = every installed output-based
    #: scorer; "all+model" adds the model-aware ones (own passes over the images)
    scorers: tuple[str, ...] = ("all+model", "logit_kde:mode=class_conditional")
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

    def __post_init__(self) -> None:
        for name in ("ood", "ood_val"):
            sets = tuple(
                o if isinstance(o, OODSet) else OODSet(**o) if isinstance(o, Mapping) else o
                for o in getattr(self, name)
            )
            bad = [o for o in sets if not isinstance(o, OODSet)]
            if bad:
                raise TypeError(
                    f"BenchmarkConfig.{name} entries must be OOD sets (name, spec, group), "
                    f"got {bad[:2]}."
                )
            object.__setattr__(self, name, sets)
        object.__setattr__(self, "missing_sets", tuple(dict(m) for m in self.missing_sets))
        object.__setattr__(
            self,
            "alphas",
            tuple(self.alphas) if not isinstance(self.alphas, float) else (self.alphas,),
        )
        bad_alpha = [a for a in self.alphas if not (isinstance(a, float | int) and 0 < a < 1)]
        if bad_alpha:
            raise ValueError(f"alphas must be in (0, 1), got {bad_alpha}.")
        if self.bootstrap and (not isinstance(self.bootstrap, int) or self.bootstrap < 10):
            raise ValueError(
                f"bootstrap must be 0 or at least 10 resamples, got {self.bootstrap!r}."
            )
        if self.fdr is not None and not 0 < self.fdr < 1:
            raise ValueError(f"fdr must be in (0, 1), got {self.fdr!r}.")
        for name, kind in (("models", str), ("checkpoints", str), ("seeds", int), ("scorers", str)):
            object.__setattr__(self, name, _tuple_of(name, getattr(self, name), kind))
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"BenchmarkConfig.id must be a dataset spec, got {self.id!r}.")
        if not self.models:
            raise ValueError("BenchmarkConfig.models is empty; name at least one timm model.")
        if self.checkpoints and len(self.checkpoints) != len(self.models):
            raise ValueError(
                f"Give one checkpoint per model: {len(self.models)} model(s), "
                f"{len(self.checkpoints)} checkpoint(s)."
            )
        if not self.ood:
            raise ValueError("BenchmarkConfig.ood is empty; add at least one OOD set.")
        names = [o.name for o in self.ood]
        if len(set(names)) != len(names) or {"near", "far", "mean"} & set(names):
            raise ValueError(
                f"OOD set names must be unique and not 'near', 'far' or 'mean': {names}."
            )
        if not self.seeds:
            raise ValueError("BenchmarkConfig.seeds is empty.")
        if not 0.0 < self.id_acceptance <= 1.0:
            raise ValueError(f"id_acceptance must be in (0, 1], got {self.id_acceptance!r}.")
        for name, valid in (
            ("precision", PRECISIONS),
            ("preprocess", PREPROCESS_MODES),
            ("features_dtype", FEATURE_DTYPES),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not valid; use one of {', '.join(valid)}."
                )
        if self.num_workers is not None and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}.")
        if self.convention not in CONVENTIONS:
            raise ValueError(
                f"convention={self.convention!r} is not valid; use one of {', '.join(CONVENTIONS)}."
            )
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction!r}.")
        if not 0.0 < self.calib_fraction < 0.5:
            raise ValueError(
                f"calib_fraction must be in (0, 0.5) (the operating threshold is chosen on the "
                f"calib split), got {self.calib_fraction!r}."
            )
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
        if self.tune and self.val_fraction == 0.0:
            raise ValueError("tune=True (--tune) needs an ID val split: val_fraction > 0.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}.")
        if not isinstance(self.train, Mapping):
            raise TypeError(f"BenchmarkConfig.train must be a mapping, got {self.train!r}.")
        valid = [f.name for f in dataclasses.fields(TrainConfig)]
        unknown = set(self.train) - set(valid)
        if unknown:
            raise ValueError(f"Unknown training option(s) {sorted(unknown)}; valid: {valid}.")

    @classmethod
    def from_protocol(
        cls,
        name: str,
        data_root: str | os.PathLike[str] | None = None,
        download: bool = False,
        strict: bool = False,
        **overrides: Any,
    ) -> BenchmarkConfig:
        """The config of a registered protocol (e.g. OpenOOD's ``"cifar10"``), its sets
        found under ``data_root`` (see :func:`resolve_protocol`); ``overrides`` replace
        fields (an ``ood`` override adds sets, or replaces those with the same name)."""
        resolved = resolve_protocol(name, data_root, download=download, strict=strict)
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


def load_config(
    path: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    models_root: str | os.PathLike[str] | None = None,
) -> BenchmarkConfig:
    """Read a :class:`BenchmarkConfig` from ``.yaml``/``.yml`` or ``.toml``.

    ``{data_root}`` in the file is replaced by ``data_root`` (or ``$OODLENS_DATA_ROOT``), and
    ``{models_root}`` by ``models_root`` (or ``$OODLENS_MODELS_ROOT``, else the ``models``
    folder beside the data root), so a config can point at any copy of its data and
    checkpoints. Syntax errors and bad values are reported with the file name (and line,
    for syntax errors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    text = path.read_text()
    if "{data_root}" in text:
        root = data_root if data_root is not None else os.environ.get("OODLENS_DATA_ROOT")
        if root is None:
            raise ValueError(
                f"Config {str(path)!r} uses {{data_root}}: pass --data-root DIR (or set "
                "OODLENS_DATA_ROOT)."
            )
        if not Path(root).is_dir():
            raise FileNotFoundError(f"Data root {str(root)!r} does not exist.")
        text = text.replace("{data_root}", str(Path(root).resolve()))
    if "{models_root}" in text:
        models = models_root if models_root is not None else os.environ.get("OODLENS_MODELS_ROOT")
        if models is None:
            root = data_root if data_root is not None else os.environ.get("OODLENS_DATA_ROOT")
            models = Path(root).resolve().parent / "models" if root is not None else None
        if models is None or not Path(models).is_dir():
            raise FileNotFoundError(
                f"Config {str(path)!r} uses {{models_root}}: pass --models-root DIR (or set "
                f"OODLENS_MODELS_ROOT); tried {str(models)!r}."
            )
        text = text.replace("{models_root}", str(Path(models).resolve()))
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
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
    if not isinstance(data, dict):
        raise ValueError(f"Config {str(path)!r} must hold a mapping of options.")
    data = data.get("benchmark", data)
    valid = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    unknown = set(data) - valid
    if unknown:
        raise ValueError(
            f"Config {str(path)!r}: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}."
        )
    try:
        return BenchmarkConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Config {str(path)!r}: {exc}") from None


def expand_scorers(specs: Sequence[str]) -> list[str]:
    """Scorer specs with ``"all"`` (or nothing) replaced by every installed output-based
    scorer, and ``"all+model"`` by every installed scorer including the model-aware ones
    (which run in their own passes over the images), in order, without duplicates."""
    out: list[str] = []
    for spec in specs or ("all",):
        if spec == "all":
            names = [n for n in list_scorers() if "model" not in create_scorer(n).requirements()]
        elif spec == "all+model":
            names = list_scorers()
        else:
            names = [spec]
        for s in names:
            if s not in out:
                out.append(s)
    return out


def resolve_protocol(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    strict: bool = False,
) -> dict[str, Any]:
    """Find a protocol's sets under ``data_root`` (default ``$OODLENS_DATA_ROOT``).

    Each set is the first of its listed folders that exists (an ImageFolder; the ID folder
    holds ``train/`` and ``test/``, or ``val/``); with ``download``, a set no folder holds
    comes from its torchvision dataset when torchvision has it. Sets still missing are
    skipped and listed (with where to put them) in ``missing_sets``, or, with ``strict``, an
    error. Returns ``BenchmarkConfig`` fields: ``id``, ``ood``, ``img_size``, ``protocol``,
    ``missing_sets``.
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

    def find(entry: Mapping[str, Any]) -> str | None:
        for folder in entry.get("folders", ()):
            if (root / folder).is_dir():
                return str((root / folder).resolve())
        return entry.get("torchvision") if download else None

    id_spec = find(protocol["id"])
    if id_spec is None:
        where = ", ".join(str(root / f) for f in protocol["id"].get("folders", ()))
        raise FileNotFoundError(
            f"Protocol {name!r}: its ID set was not found; put it (with train/ and test/ "
            f"sub-folders) at one of: {where}"
            + (
                " (or pass --download to fetch it with torchvision)."
                if protocol["id"].get("torchvision")
                else "."
            )
        )
    ood, missing = [], []
    for entry in protocol["ood"]:
        spec = find(entry)
        if spec is not None:
            ood.append(OODSet(entry["name"], spec, entry["group"]))
            continue
        missing.append(
            {
                "name": entry["name"],
                "group": entry["group"],
                "put_it_at": [str(root / f) for f in entry.get("folders", ())],
                "torchvision": entry.get("torchvision"),
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
        "img_size": protocol.get("img_size"),
        "protocol": name,
        "missing_sets": tuple(missing),
    }
