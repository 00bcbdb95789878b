"""Conformance checks for scorers, usable by plugin authors (like scikit-learn's
``check_estimator``)::

    from oodlens.testing import check_scorer
    check_scorer("my_scorer")
"""

from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any

import numpy as np

from .errors import MissingOutputsError, NotFittedError
from .metrics import auroc
from .options import GRAM_POWERS
from .outputs import Outputs
from .registry import create_scorer
from .saving import load_scorer, save_scorer
from .scorers.base import ModelInputs, block_requirement, stage_blocks

__all__ = ["synthetic_outputs", "synthetic_model_inputs", "check_scorer"]


def synthetic_outputs(
    n: int = 200,
    n_classes: int = 4,
    dim: int = 16,
    seed: int = 0,
    kind: str = "id",
    nonnegative: bool = False,
) -> Outputs:
    """Outputs of a fixed linear "model" on Gaussian class clusters, with every field.

    The class means form a simplex equiangular tight frame (the geometry trained networks
    converge to, "neural collapse") of norm 6 in a random ``dim``-D subspace; the head's
    weights are the normalised means, so a sample's own-class logit is about 6 and the others
    about -6/(C-1), as for a well-trained classifier. ID features vary mostly inside a
    low-dimensional subspace (unit noise in 2C directions, 0.2 elsewhere), as real
    penultimate features do. Two earlier "stages" are fixed random projections of the
    features (``stage1``: tanh of 6 of them, ``stage2``: 8), with stand-ins for their Gram
    statistics (``gram1``, ``gram2``: the projections' magnitudes, scaled per order).

    Args:
        n: number of samples.
        n_classes: number of classes C (2C <= dim).
        dim: feature dimension D.
        seed: seed of the samples (the model itself is always the same).
        nonnegative: pass the features through a ReLU (as post-ReLU CNN features are), with
            the logits computed from them, for scorers defined only on such activations.
        kind: ``"id"`` draws features around the class means; ``"ood"`` draws isotropic
            features near the origin, between the clusters and off the ID subspace, where a
            sensible scorer is less confident than on ID data.
    """
    if kind not in ("id", "ood"):
        raise ValueError(f"kind must be 'id' or 'ood', got {kind!r}.")
    if not 2 <= n_classes <= dim // 2:
        raise ValueError(f"need 2 <= n_classes <= dim/2, got n_classes={n_classes}, dim={dim}.")
    rng = np.random.default_rng(seed)
    model = np.random.default_rng(1234)
    basis, _ = np.linalg.qr(model.normal(size=(dim, 2 * n_classes)))
    etf = np.sqrt(n_classes / (n_classes - 1)) * (np.eye(n_classes) - 1.0 / n_classes)
    means = 6.0 * (basis[:, :n_classes] @ etf).T
    weight = means / np.linalg.norm(means, axis=1, keepdims=True)
    bias = model.normal(size=n_classes) * 0.1
    labels = rng.integers(0, n_classes, size=n)
    if kind == "id":
        features = (
            means[labels]
            + rng.normal(size=(n, 2 * n_classes)) @ basis.T
            + 0.2 * rng.normal(size=(n, dim))
        )
    else:
        features = 0.7 * rng.normal(size=(n, dim))
    if nonnegative:
        features = np.maximum(features, 0.0)
    blocks = {}
    for stage, width in ((1, 6), (2, 8)):
        projected = features @ model.normal(size=(dim, width)) / np.sqrt(dim)
        blocks[f"stage{stage}"] = np.tanh(projected)
        blocks[f"gram{stage}"] = np.concatenate(
            [np.abs(projected) * (1.0 + 0.1 * p) for p in GRAM_POWERS], axis=1
        )
    return Outputs(
        logits=features @ weight.T + bias,
        labels=labels,
        features=features,
        head_weight=weight,
        head_bias=bias,
        blocks=blocks,
    )


def synthetic_model_inputs(outputs: Outputs) -> ModelInputs:
    """A network and images that reproduce ``outputs`` exactly, for model-aware scorers.

    The images are the features as (N, D, 1, 1) maps, the network's ``forward_features``
    is a ReLU-free identity (named ``"features"``), global pooling, and the outputs' linear
    head as ``fc`` (timm's API: ``forward_features``, ``forward_head``, ``get_classifier``),
    so its logits equal ``outputs.logits`` and input gradients are well defined.
    """
    import torch
    from torch import nn

    if outputs.features is None or outputs.head_weight is None:
        raise ValueError("synthetic_model_inputs needs outputs with features and a head.")

    class ProbeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Identity()
            w = torch.tensor(outputs.head_weight, dtype=torch.float64)
            self.fc = nn.Linear(w.shape[1], w.shape[0]).double()
            with torch.no_grad():
                self.fc.weight.copy_(w)
                self.fc.bias.copy_(torch.tensor(outputs.head_bias, dtype=torch.float64))

        def forward_features(self, x):
            return self.features(x)

        def forward_head(self, x, pre_logits: bool = False):
            x = x.mean(dim=(2, 3))
            return x if pre_logits else self.fc(x)

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    images = torch.tensor(np.asarray(outputs.features, dtype=np.float64))[:, :, None, None]
    labels = torch.zeros(len(images), dtype=torch.long)

    def batches():
        for start in range(0, len(images), 64):
            yield images[start : start + 64], labels[start : start + 64]

    dim = images.shape[1]
    return ModelInputs(ProbeNet().eval(), batches, torch.device("cpu"), (1.0,) * dim, len(images))


def _without(outputs: Outputs, requirement: str) -> Outputs:
    kwargs: dict[str, Any] = {
        "logits": outputs.logits,
        "labels": outputs.labels,
        "features": outputs.features,
        "head_weight": outputs.head_weight,
        "head_bias": outputs.head_bias,
        "blocks": outputs.blocks,
    }
    block = block_requirement(requirement)
    if block is not None:
        dropped = set(_required_blocks(outputs, {requirement}))
        kwargs["blocks"] = {k: v for k, v in outputs.blocks.items() if k not in dropped}
        return Outputs(**kwargs)
    drop = {"features": ("features",), "head": ("head_weight", "head_bias"), "labels": ("labels",)}
    for field in drop[requirement]:
        kwargs[field] = None
    return Outputs(**kwargs)


def _required_blocks(outputs: Outputs, requires: set[str] | frozenset[str]) -> list[str]:
    """The names of the feature blocks of ``outputs`` that the requirements name."""
    names = []
    for req in requires:
        block = block_requirement(req)
        if block is not None:
            kind, stage = block
            names += stage_blocks(outputs, kind, None if stage is None else [stage])
    return names


def _expect_missing(call: Any, requirement: str, what: str) -> None:
    try:
        call()
    except MissingOutputsError as exc:
        assert requirement in str(exc), f"the error must name {requirement!r}: {exc}"
    else:
        raise AssertionError(f"{what} without {requirement!r} must raise MissingOutputsError")


def check_scorer(name: str, params: dict[str, Any] | None = None) -> None:
    """Run the scorer contract on the registered scorer ``name``; raises AssertionError.

    Checks: ``__init__`` stores parameters verbatim (the given ones, and the signature's
    defaults unchanged) and sets no fitted state; scoring before
    ``fit`` raises :class:`~oodlens.NotFittedError`; ``fit`` returns ``self``; ``score``
    returns finite (N,) float64; scores do not depend on batch order or batch composition;
    a missing required field raises :class:`~oodlens.MissingOutputsError` naming it;
    outputs with another number of classes are refused; ID scores beat OOD scores
    (higher = more in-distribution); on outputs holding only the fields it declares it
    works and gives the same scores (an undeclared read is named); a model-aware scorer that
    does not apply to the probe network (:meth:`~oodlens.Scorer.applies_to`) refuses it with
    its reason, and is checked no further; saved and loaded (:func:`oodlens.save_scorer`), the
    scorer gives the same scores bit for bit (unless it declares ``saveable = False``); a
    scorer that declares a differentiable score (:meth:`~oodlens.Scorer.torch_score`)
    matches ``score`` to 1e-5 and has finite gradients; one that does not refuses it.
    """
    params = dict(params or {})
    scorer = create_scorer(name, **params)
    relu = type(scorer).feature_domain == "nonnegative"
    train = synthetic_outputs(400, seed=0, nonnegative=relu)
    val = synthetic_outputs(200, seed=3, nonnegative=relu)  # held-out ID data, for "val"
    test = synthetic_outputs(150, seed=1, nonnegative=relu)
    ood = synthetic_outputs(150, seed=2, kind="ood", nonnegative=relu)
    aware = "model" in scorer.requirements()

    def model(outputs: Outputs) -> ModelInputs | None:
        return synthetic_model_inputs(outputs) if aware else None

    def score(s: Any, outputs: Outputs) -> np.ndarray:
        return s.score(outputs, model=model(outputs))

    if aware:  # a scorer that does not apply to the probe network must refuse it, saying why
        reason = scorer.applies_to(model(train).model)
        if reason is not None:
            _check_refuses(scorer, train, val, test, model, reason)
            return
    unknown = set(type(scorer).parameter_constraints) - set(scorer.param_names())
    assert not unknown, f"parameter_constraints name parameters __init__ lacks: {sorted(unknown)}"
    for key, value in params.items():
        assert getattr(scorer, key) is value, f"__init__ must store {key!r} verbatim"
    _check_stores_defaults(name)
    fitted = [k for k in vars(scorer) if k.endswith("_") and not k.startswith("__")]
    assert not fitted, f"__init__ must not set fitted state, found {fitted}"

    try:
        score(scorer, test)
    except NotFittedError as exc:
        assert "not fitted" in str(exc)
        assert isinstance(exc, ValueError) and isinstance(exc, AttributeError)
    else:
        raise AssertionError("scoring before fit must raise NotFittedError")

    assert scorer.fit(train, val=val, model=model(train)) is scorer, "fit must return self"
    scores = score(scorer, test)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64
    assert scores.shape == (test.n_samples,), f"score shape {scores.shape}"
    assert np.isfinite(scores).all(), "scores must be finite"

    perm = np.random.default_rng(0).permutation(test.n_samples)
    tol = {"rtol": 1e-6, "atol": 1e-9} if aware else {"rtol": 1e-9, "atol": 1e-12}
    np.testing.assert_allclose(score(scorer, test.subset(perm)), scores[perm], **tol)
    np.testing.assert_allclose(score(scorer, test.subset(slice(0, 7))), scores[:7], **tol)

    for requirement in sorted(set(scorer.requirements()) - {"logits"}):
        fresh = create_scorer(name, **params)
        if requirement in ("val", "model"):
            kwargs = {"val": val, "model": model(train)}
            kwargs.pop(requirement)
            _expect_missing(lambda f=fresh, k=kwargs: f.fit(train, **k), requirement, "fit")
            continue
        _expect_missing(
            lambda r=requirement, f=fresh: f.fit(_without(train, r), val=val, model=model(train)),
            requirement,
            "fit",
        )
        if requirement != "labels":
            _expect_missing(
                lambda r=requirement: scorer.score(_without(test, r), model=model(test)),
                requirement,
                "score",
            )

    other = Outputs(logits=np.zeros((3, train.n_classes + 1)))
    try:
        scorer.score(other, model=None)
    except (ValueError, MissingOutputsError):
        pass
    else:
        raise AssertionError("scoring outputs with another number of classes must raise")

    separation = auroc(scores, score(scorer, ood))
    assert separation > 0.6, f"ID should score higher than OOD (AUROC {separation:.3f})"
    _check_reads_only_what_it_declares(name, params, train, val, test, model, scores, tol)
    _check_round_trip(scorer, test, score, scores)
    _check_torch_score(scorer, test, scores)


def _check_refuses(
    scorer: Any, train: Outputs, val: Outputs, test: Outputs, model: Any, reason: str
) -> None:
    """A scorer that does not apply to the network refuses to fit or to score, with its
    reason (the harness leaves it out of ``all+model`` runs with the same reason)."""
    try:
        scorer.fit(train, val=val, model=model(train))
        scorer.score(test, model=model(test))
    except ValueError as exc:
        assert reason in str(exc), f"the refusal must give the reason {reason!r}: {exc}"
    else:
        raise AssertionError(f"{scorer.name} does not apply ({reason}) but fitted and scored")


def _check_stores_defaults(name: str) -> None:
    """Created with no parameters, the scorer holds each ``__init__`` default as it is in
    the signature (the same object, or an equal one of the same type): an ``__init__``
    that converts or clips a parameter breaks ``get_params``/``set_params`` and the specs
    (as scikit-learn's common checks require)."""
    scorer = create_scorer(name)
    signature = inspect.signature(type(scorer).__init__)
    for key, param in signature.parameters.items():
        if key == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        assert hasattr(scorer, key), f"__init__ must store its parameter {key!r} as self.{key}"
        stored, default = getattr(scorer, key), param.default
        same = stored is default or (type(stored) is type(default) and stored == default)
        assert same, (
            f"__init__ must store {key!r} unchanged: the default is {default!r} but it stored "
            f"{stored!r}; do conversions and checks in fit (parameter_constraints), not in "
            "__init__"
        )


#: The fields of each requirement a scorer declares.
_FIELDS = {"features": ("features",), "head": ("head_weight", "head_bias"), "labels": ("labels",)}


def _only(outputs: Outputs | None, fields: set[str], blocks: list[str]) -> Outputs | None:
    """``outputs`` with only the logits, ``fields`` and the named ``blocks`` (the others
    None)."""
    if outputs is None:
        return None
    kept = {f: getattr(outputs, f) for f in fields}
    return Outputs(logits=outputs.logits, blocks={b: outputs.blocks[b] for b in blocks}, **kept)


def _check_reads_only_what_it_declares(
    name: str,
    params: dict[str, Any],
    train: Outputs,
    val: Outputs,
    test: Outputs,
    model: Any,
    scores: np.ndarray,
    tol: dict[str, float],
) -> None:
    """Fitted and scored on outputs holding only the fields its requirements declare, the
    scorer works and gives the same scores; a field it reads without declaring it is
    named (the harness gives every field, a user's own outputs may not)."""
    requires = create_scorer(name, **params).requirements()
    declared = {f for req in requires for f in _FIELDS.get(req, ())}
    undeclared = [f for fields in _FIELDS.values() for f in fields if f not in declared]

    blocks = _required_blocks(train, requires)

    def run(fields: set[str]) -> np.ndarray:
        fresh = create_scorer(name, **params)
        fresh.fit(
            _only(train, fields, blocks),
            val=_only(val, fields, blocks) if "val" in requires else None,
            model=model(train),
        )
        return fresh.score(_only(test, fields, blocks), model=model(test))

    try:
        got = run(declared)
    except Exception as exc:
        culprit = next(
            (f for f in undeclared if _works(lambda f=f: run(declared | {f}))),
            "an undeclared field",
        )
        requirement = next((r for r, fs in _FIELDS.items() if culprit in fs), culprit)
        raise AssertionError(
            f"{name} fails on outputs holding only what it declares ({sorted(requires)}): "
            f"{type(exc).__name__}: {exc}. It reads {culprit!r}: add {requirement!r} to its "
            "requires (or requirements())."
        ) from exc
    np.testing.assert_allclose(
        got,
        scores,
        **tol,
        err_msg=f"{name}'s scores change when the undeclared fields {undeclared} are absent: it "
        "reads them; declare them in its requires",
    )


def _works(call: Any) -> bool:
    try:
        call()
    except Exception:
        return False
    return True


def _check_torch_score(scorer: Any, test: Outputs, scores: np.ndarray) -> None:
    """A scorer that declares a differentiable score gives :meth:`~oodlens.Scorer.score`'s
    values (float64, rtol 1e-5 plus 1e-9 absolute for scores that are exactly 0), and
    finite gradients that reach its inputs; one that does not refuses, naming itself."""
    import torch

    def tensor(array: Any) -> Any:
        if array is None:
            return None
        return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)

    logits, features = tensor(test.logits), tensor(test.features)
    head = None if test.head_weight is None else (tensor(test.head_weight), tensor(test.head_bias))
    if not scorer.differentiable:
        try:
            scorer.torch_score(logits, features, head)
        except TypeError as exc:
            assert scorer.name in str(exc), "the refusal must name the scorer"
        else:
            raise AssertionError("a scorer without a torch form must refuse torch_score()")
        return
    value = scorer.torch_score(logits, features, head)
    assert isinstance(value, torch.Tensor) and value.shape == (test.n_samples,)
    np.testing.assert_allclose(
        value.detach().numpy(), scores, rtol=1e-5, atol=1e-9, err_msg="torch_score != score"
    )
    value.sum().backward()
    grads = [t.grad for t in (logits, features) if t is not None and t.grad is not None]
    assert grads, "torch_score must be differentiable with respect to its inputs"
    assert all(torch.isfinite(g).all() for g in grads), "gradients must be finite"
    assert any(g.abs().sum() > 0 for g in grads), "gradients must reach the inputs"


def _check_round_trip(scorer: Any, test: Outputs, score: Any, scores: np.ndarray) -> None:
    """Saved and loaded (through a file, by name), the scorer gives the same scores, bit
    for bit; one that declares it cannot be saved refuses to give its state."""
    if not type(scorer).saveable:
        try:
            scorer.get_state()
        except TypeError as exc:
            assert scorer.name in str(exc), "the refusal must name the scorer"
        else:
            raise AssertionError("a scorer with saveable = False must refuse get_state()")
        return
    with tempfile.TemporaryDirectory() as folder:
        loaded = load_scorer(save_scorer(scorer, os.path.join(folder, "scorer.oodlens")))
        assert type(loaded) is type(scorer) and loaded.get_params() == scorer.get_params()
        np.testing.assert_array_equal(
            score(loaded, test), scores, err_msg="scores changed after saving and loading"
        )
