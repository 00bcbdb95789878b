"""The :class:`Scorer` interface (scikit-learn contract) shared by all OOD scorers."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..arrays import row_fingerprints
from ..errors import MissingOutputsError, NotFittedError
from ..outputs import Outputs
from ..params import Constraint, validate_params

__all__ = [
    "Scorer",
    "REQUIREMENTS",
    "ModelInputs",
    "check_requirements",
    "block_requirement",
    "stage_blocks",
]

#: What a scorer may require from :class:`Outputs`, and the fields each name stands for.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "logits": ("logits",),
    "features": ("features",),
    "head": ("head_weight", "head_bias"),
    "labels": ("labels",),
    "val": (),  # held-out ID validation outputs passed to fit(train, val=...)
    "model": (),  # the network and the images (ModelInputs), for model-aware scorers
}

#: Requirements beside :data:`REQUIREMENTS`: named feature blocks of earlier stages
#: (:attr:`Outputs.blocks`): ``"stage2"`` (stage 2's pooled features), ``"gram3"`` (stage
#: 3's Gram statistics), or ``"stages"`` / ``"grams"``: every block of that kind the
#: outputs carry (the harness then extracts every stage of the backbone).
_BLOCK_REQUIREMENT = re.compile(r"(stage|gram)(?:(\d+)|s)\Z")


def block_requirement(requirement: str) -> tuple[str, int | None] | None:
    """``(kind, stage)`` of a feature-block requirement (``stage`` ``None``: every stage),
    ``None`` for the other requirements.

    Example:
        >>> block_requirement("gram3"), block_requirement("stages"), block_requirement("head")
        (('gram', 3), ('stage', None), None)
    """
    match = _BLOCK_REQUIREMENT.match(requirement)
    if match is None:
        return None
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def stage_blocks(outputs: Outputs, kind: str, stages: Sequence[int] | None) -> list[str]:
    """The names of the ``kind`` blocks (``"stage"`` or ``"gram"``) of ``stages`` (``None``:
    every one the outputs carry, by stage), e.g. ``["stage1", "stage2"]``."""
    if stages is not None:
        return [f"{kind}{i}" for i in stages]
    found = [
        (parsed[1], name)
        for name in (outputs.blocks or {})
        if (parsed := block_requirement(name)) is not None and parsed[0] == kind
    ]
    return [name for _, name in sorted(found)]


@dataclass
class ModelInputs:
    """What a model-aware scorer receives beside the :class:`Outputs` of the same rows.

    Model-aware scorers (``"model"`` in :meth:`Scorer.requirements`) need the network itself:
    input gradients (ODIN), gradients of inner parameters (GradNorm on an inner layer) or
    activations inside the network (ASH/SCALE on an inner layer). The harness builds one
    ``ModelInputs`` per dataset; the rows match the :class:`Outputs` row for row.

    Attributes:
        model: the network (a timm model, in eval mode; ``forward_features``,
            ``forward_head``, ``get_classifier``).
        batches: ``batches()`` yields ``(images, labels)`` tensors of preprocessed images,
            in the order of the outputs' rows.
        device: where ``model`` runs (a ``torch.device``).
        std: the per-channel standard deviation of the preprocessing normalisation (so that
            input-space steps such as ODIN's can be taken on the [0, 1] pixel scale).
        n_samples: number of rows.
    """

    model: Any
    batches: Callable[[], Iterable[tuple[Any, Any]]]
    device: Any
    std: tuple[float, ...]
    n_samples: int


def check_requirements(owner: str, requires: frozenset[str], outputs: Outputs) -> None:
    """Raise :class:`MissingOutputsError` if ``outputs`` lacks a field in ``requires``."""
    if not isinstance(outputs, Outputs):
        raise TypeError(
            f"{owner} expects oodlens.Outputs, got {type(outputs).__name__}; wrap arrays as "
            "oodlens.Outputs(logits=..., features=..., labels=...)."
        )
    for req in sorted(requires):
        block = block_requirement(req)
        if block is not None:
            _check_block(owner, req, block, outputs)
            continue
        missing = [f for f in REQUIREMENTS[req] if getattr(outputs, f) is None]
        if missing:
            raise MissingOutputsError(
                f"{owner} requires {req!r}, but these Outputs have no {' / '.join(missing)}. "
                "Extract outputs with oodlens.extract_outputs (which records features and the "
                f"head) or pass {', '.join(f'{m}=...' for m in missing)} to oodlens.Outputs."
            )


def _check_block(owner: str, req: str, block: tuple[str, int | None], outputs: Outputs) -> None:
    kind, stage = block
    if (req in (outputs.blocks or {})) if stage is not None else stage_blocks(outputs, kind, None):
        return
    what = "pooled features" if kind == "stage" else "Gram statistics"
    option = "--stages" if kind == "stage" else "--gram-stages"
    field = "stages" if kind == "stage" else "gram_stages"
    which = "every stage" if stage is None else f"stage {stage}"
    raise MissingOutputsError(
        f"{owner} requires {req!r}: the {what} of {which} of the backbone, but these Outputs "
        f"have {sorted(outputs.blocks or {}) or 'no feature blocks'}. The harness extracts them "
        f"for the scorers that declare them (or {option} N ...); elsewhere extract with "
        f"ExtractOptions({field}=...) or pass blocks={{'{kind}N': array}} to oodlens.Outputs."
    )


class Scorer:
    """Base class of OOD scorers: **higher score = more in-distribution**.

    Follows the scikit-learn contract: ``__init__`` stores hyperparameters verbatim and does
    nothing else; :meth:`fit` learns from the outputs of the training set and sets attributes
    whose names end with an underscore; :meth:`score` returns a (N,) float64 array.
    Subclasses implement ``_fit`` and ``_score``; the public methods add the checks.

    Class attributes:
        name: registry name (e.g. ``"msp"``).
        requires: what the scorer reads from :class:`Outputs` with its default parameters: a
            subset of ``"logits"``, ``"features"``, ``"head"`` and ``"labels"``. When it
            depends on the parameters, override :meth:`requirements` (per instance). ``fit``
            and ``score`` check it; labels are required only when fitting.
        parameter_constraints: ``{parameter: [Interval(...), Options(...), None, ...]}``
            (see :mod:`oodlens.params`), checked by :meth:`check_params` when the scorer is
            created through :func:`oodlens.create_scorer` and again at ``fit``, so a bad
            value fails before any model runs.
        tuning_grid: ``{parameter: [values]}`` that ``oodlens bench --tune`` searches on held-
            out ID validation data and an OOD validation set (never on test rows).
        description: one line for ``oodlens scorers``.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"logits"})
    parameter_constraints: ClassVar[Mapping[str, Sequence[Constraint | None]]] = {}
    #: the features the scorer is defined on: "any", or "nonnegative" (post-ReLU
    #: activations, e.g. ASH); the contract suite checks it on data of that kind
    feature_domain: ClassVar[str] = "any"
    #: values ``--tune`` searches (on ID val + OOD val, by AUROC) for each parameter
    tuning_grid: ClassVar[Mapping[str, Sequence[Any]]] = {}
    description: ClassVar[str] = ""
    #: whether a fitted instance can be saved (:meth:`get_state`); a scorer whose fitted
    #: state cannot be written as arrays, scalars and strings says False, and saving it is
    #: an error naming it
    saveable: ClassVar[bool] = True
    #: paths in the fitted state of :meth:`get_state` (``key`` or ``key/subkey``) holding
    #: large float arrays (e.g. a neighbour bank) that a save with ``half=True`` stores as
    #: float16
    large_state: ClassVar[tuple[str, ...]] = ()

    def requirements(self) -> frozenset[str]:
        """What this instance reads from :class:`Outputs` (default: the class's ``requires``)."""
        return frozenset(self.requires)

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        """Whether the scorer is defined for the network ``model`` (a timm model, possibly
        built on the meta device: its modules and attributes, no weights) on inputs of
        ``input_size`` (C, H, W; ``None``: unknown): ``None``, or the reason it is not (e.g.
        ``mcd`` on a network without dropout). The harness names the reason as an error when
        the scorer was asked for by name, and lists it under the table when ``all`` /
        ``all+model`` skipped it. Default: every network."""
        return None

    def check_params(self) -> None:
        """Validate the hyperparameters against ``parameter_constraints``.

        Raises:
            InvalidParameterError: naming the parameter, its value and the valid range.
        """
        validate_params(type(self).__name__, self.get_params(), self.parameter_constraints)

    def fit(
        self, train: Outputs, val: Outputs | None = None, model: ModelInputs | None = None
    ) -> Scorer:
        """Fit on the classifier's outputs on its (in-distribution) training data.

        Args:
            train: outputs on the ID training data. Never fit on OOD data.
            val: outputs on held-out ID validation data the classifier never saw (the
                harness's ``val`` split), for scorers that fit something on held-out data
                (they list ``"val"`` in :meth:`requirements` and take ``val`` in ``_fit``);
                ignored by the others.
            model: for model-aware scorers (``"model"`` in :meth:`requirements`), the network
                and the training images (:class:`ModelInputs`, rows matching ``train``).

        Returns ``self``.
        """
        self.check_params()
        requires = self.requirements()
        owner = f"Scorer {self.name!r}"
        check_requirements(owner, requires - {"val", "model"}, train)
        self._check_model(owner, requires, model, train)
        if "val" in requires:
            if val is None:
                raise MissingOutputsError(
                    f"{owner} requires 'val': held-out ID validation outputs, passed as "
                    "fit(train, val=...) (the harness passes its val split)."
                )
            check_requirements(owner, requires - {"val", "labels", "model"}, val)
        accepted = inspect.signature(self._fit).parameters
        kwargs = {k: v for k, v in (("val", val), ("model", model)) if k in accepted}
        self._fit(train, **kwargs)
        self.n_classes_ = train.n_classes
        self.n_features_in_ = train.features.shape[1] if "features" in requires else None
        # which rows were used for fitting (see oodlens.conformal: they cannot calibrate)
        used = [train] + ([val] if "val" in requires else [])
        self.fit_rows_ = np.unique(np.concatenate([row_fingerprints(o.logits) for o in used]))
        return self

    @staticmethod
    def _check_model(owner: str, requires: frozenset[str], model: Any, outputs: Outputs) -> None:
        if "model" not in requires:
            return
        if model is None:
            raise MissingOutputsError(
                f"{owner} requires 'model': it is model-aware and needs the network and the "
                "images (oodlens.scorers.ModelInputs) besides the outputs; the harness passes "
                "them when the scorer is named (or with --scorers all+model)."
            )
        if model.n_samples != outputs.n_samples:
            raise ValueError(
                f"{owner}: the model inputs have {model.n_samples} images but the outputs "
                f"{outputs.n_samples} rows; they must describe the same samples."
            )

    def score(self, outputs: Outputs, model: ModelInputs | None = None) -> np.ndarray:
        """Score samples: (N,) float64, higher = more in-distribution. ``model``: the network
        and these samples' images, for model-aware scorers only."""
        self._check_fitted()
        check_requirements(
            f"Scorer {self.name!r}", self.requirements() - {"labels", "val", "model"}, outputs
        )
        if outputs.n_classes != self.n_classes_:
            raise ValueError(
                f"Scorer {self.name!r} was fitted on {self.n_classes_} classes but these "
                f"Outputs have {outputs.n_classes} logit columns; use outputs of the same model."
            )
        dim = vars(self).get("n_features_in_")
        if dim is not None and outputs.features.shape[1] != dim:
            raise ValueError(
                f"Scorer {self.name!r} was fitted on {dim} features but these Outputs have "
                f"{outputs.features.shape[1]}; use outputs of the same model."
            )
        requires = self.requirements()
        self._check_model(f"Scorer {self.name!r}", requires, model, outputs)
        if "model" in requires:
            scores = np.asarray(self._score(outputs, model=model), dtype=np.float64)
        else:
            scores = np.asarray(self._score(outputs), dtype=np.float64)
        if scores.shape != (outputs.n_samples,):
            raise RuntimeError(
                f"Scorer {self.name!r} returned shape {scores.shape}, expected "
                f"({outputs.n_samples},); this is a bug in the scorer."
            )
        bad = ~np.isfinite(scores)
        if bad.any():
            raise RuntimeError(
                f"Scorer {self.name!r} returned {int(bad.sum())} NaN or inf score(s) of "
                f"{scores.size} (first at row {int(np.argmax(bad))}); a scorer must return "
                "finite scores. This is a bug in the scorer (or its parameters)."
            )
        return scores

    @property
    def differentiable(self) -> bool:
        """Whether :meth:`torch_score` is defined: the scorer declares a torch form of its
        score (``_torch_score``) and needs no passes of its own through the network."""
        return (
            type(self)._torch_score is not Scorer._torch_score
            and "model" not in self.requirements()
        )

    def torch_score(
        self,
        logits: Any,
        features: Any = None,
        head: tuple[Any, Any] | None = None,
    ) -> Any:
        """The score as a differentiable torch tensor: (N,) float64, equal to :meth:`score`
        on the same outputs (the contract suite checks it to 1e-5), with gradients flowing
        back to ``logits`` and ``features`` (what the score explainers need).

        Args:
            logits: (N, C) tensor.
            features: (N, D) penultimate features, for scorers that read them.
            head: ``(weight (C, D), bias (C,))`` tensors of the classifier head, for scorers
                that read it at score time.

        Raises:
            NotFittedError: the scorer is not fitted.
            TypeError: it has no differentiable form (e.g. a model-aware scorer, which makes
                its own gradient passes), naming it.
            MissingOutputsError: a required input is missing.
        """
        self._check_fitted()
        if not self.differentiable:
            raise TypeError(
                f"Scorer {self.name!r} has no differentiable form of its score"
                + (
                    " (it is model-aware: it makes its own passes through the network)"
                    if "model" in self.requirements()
                    else ""
                )
                + "; explain the class instead, or a scorer that declares one."
            )
        for requirement, value in (("features", features), ("head", head)):
            if requirement in self.requirements() and value is None:
                raise MissingOutputsError(
                    f"Scorer {self.name!r} requires {requirement!r} for its torch score."
                )
        return self._torch_score(logits, features, head)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        """The differentiable score (override to declare one; see :meth:`torch_score`)."""
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        """The parameters and the fitted state, as plain data: ``{"params": ...,
        "fitted": {...}}``, the fitted values numpy arrays, numbers, strings, booleans,
        ``None`` or tuples of these (what :mod:`oodlens.statefile` can store without
        pickle). By default the fitted state is every public attribute ending in ``_`` (as
        scikit-learn names fitted attributes); a scorer whose fitted attributes are other
        objects overrides :meth:`get_state` and :meth:`set_state` and stores the arrays
        they are built from.

        Raises:
            NotFittedError: the scorer is not fitted.
            TypeError: the scorer cannot be saved (``saveable = False``).
        """
        self._check_fitted()
        if not self.saveable:
            raise TypeError(
                f"Scorer {self.name!r} ({type(self).__name__}) declares that it cannot be "
                "saved (saveable = False): its fitted state is not plain data."
            )
        fitted = {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}
        return {"params": self.get_params(), "fitted": fitted}

    def set_state(self, fitted: Mapping[str, Any]) -> None:
        """Restore the fitted state given by :meth:`get_state` (its ``"fitted"`` part)."""
        for key, value in fitted.items():
            setattr(self, key, value)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Scorer:
        """A fitted scorer rebuilt from :meth:`get_state`'s output (parameters checked).
        :func:`oodlens.load_scorer` reads one from a file, dispatching by name."""
        scorer = cls(**state["params"])
        scorer.check_params()
        scorer.set_state(state["fitted"])
        scorer._check_fitted()
        return scorer

    def _check_fitted(self) -> None:
        if "n_classes_" not in vars(self):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this scorer."
            )

    def _fit(self, train: Outputs) -> None:
        """Learn fitted state (attributes ending in ``_``). Default: nothing to learn.

        Subclasses that fit on held-out data define ``_fit(self, train, val=None)``."""

    def _score(self, outputs: Outputs) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def param_names(cls) -> list[str]:
        """The hyperparameters accepted by ``__init__``."""
        sig = inspect.signature(cls.__init__)
        return [
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__``."""
        return {p: getattr(self, p) for p in self.param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
