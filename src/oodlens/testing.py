"""Conformance checks for scorers, usable by plugin authors (like scikit-learn's
``check_estimator``)::

    from oodlens.testing import check_scorer
    check_scorer("my_scorer")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MissingOutputsError, NotFittedError
from .metrics import auroc
from .outputs import Outputs
from .registry import create_scorer

__all__ = ["synthetic_outputs", "check_scorer"]


def synthetic_outputs(
    n: int = 200, n_classes: int = 4, dim: int = 16, seed: int = 0, kind: str = "id"
) -> Outputs:
    """Outputs of a fixed linear "model" on Gaussian class clusters, with every field.

    The class means form a simplex equiangular tight frame (the geometry trained networks
    converge to, "neural collapse") of norm 6 in a random ``dim``-D subspace; the head's
    weights are the normalised means, so a sample's own-class logit is about 6 and the others
    about -6/(C-1), as for a well-trained classifier. ID features vary mostly inside a
    low-dimensional subspace (unit noise in 2C directions, 0.2 elsewhere), as real
    penultimate features do.

    Args:
        n: number of samples.
        n_classes: number of classes C (2C <= dim).
        dim: feature dimension D.
        seed: seed of the samples (the model itself is always the same).
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
    return Outputs(
        logits=features @ weight.T + bias,
        labels=labels,
        features=features,
        head_weight=weight,
        head_bias=bias,
    )


def _without(outputs: Outputs, requirement: str) -> Outputs:
    kwargs: dict[str, Any] = {
        "logits": outputs.logits,
        "labels": outputs.labels,
        "features": outputs.features,
        "head_weight": outputs.head_weight,
        "head_bias": outputs.head_bias,
    }
    drop = {"features": ("features",), "head": ("head_weight", "head_bias"), "labels": ("labels",)}
    for field in drop[requirement]:
        kwargs[field] = None
    return Outputs(**kwargs)


def _expect_missing(call: Any, requirement: str, what: str) -> None:
    try:
        call()
    except MissingOutputsError as exc:
        assert requirement in str(exc), f"the error must name {requirement!r}: {exc}"
    else:
        raise AssertionError(f"{what} without {requirement!r} must raise MissingOutputsError")


def check_scorer(name: str, params: dict[str, Any] | None = None) -> None:
    """Run the scorer contract on the registered scorer ``name``; raises AssertionError.

    Checks: ``__init__`` stores parameters verbatim and sets no fitted state; scoring before
    ``fit`` raises :class:`~oodlens.NotFittedError`; ``fit`` returns ``self``; ``score``
    returns finite (N,) float64; scores do not depend on batch order or batch composition;
    a missing required field raises :class:`~oodlens.MissingOutputsError` naming it;
    outputs with another number of classes are refused; ID scores beat OOD scores
    (higher = more in-distribution).
    """
    params = dict(params or {})
    train = synthetic_outputs(400, seed=0)
    val = synthetic_outputs(200, seed=3)  # held-out ID data, for scorers that require "val"
    test = synthetic_outputs(150, seed=1)
    ood = synthetic_outputs(150, seed=2, kind="ood")

    scorer = create_scorer(name, **params)
    unknown = set(type(scorer).parameter_constraints) - set(scorer.param_names())
    assert not unknown, f"parameter_constraints name parameters __init__ lacks: {sorted(unknown)}"
    for key, value in params.items():
        assert getattr(scorer, key) is value, f"__init__ must store {key!r} verbatim"
    fitted = [k for k in vars(scorer) if k.endswith("_") and not k.startswith("__")]
    assert not fitted, f"__init__ must not set fitted state, found {fitted}"

    try:
        scorer.score(test)
    except NotFittedError as exc:
        assert "not fitted" in str(exc)
        assert isinstance(exc, ValueError) and isinstance(exc, AttributeError)
    else:
        raise AssertionError("scoring before fit must raise NotFittedError")

    assert scorer.fit(train, val=val) is scorer, "fit must return self"
    scores = scorer.score(test)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64
    assert scores.shape == (test.n_samples,), f"score shape {scores.shape}"
    assert np.isfinite(scores).all(), "scores must be finite"

    perm = np.random.default_rng(0).permutation(test.n_samples)
    np.testing.assert_allclose(scorer.score(test.subset(perm)), scores[perm], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        scorer.score(test.subset(slice(0, 7))), scores[:7], rtol=1e-9, atol=1e-12
    )

    for requirement in sorted(set(scorer.requirements()) - {"logits"}):
        fresh = create_scorer(name, **params)
        if requirement == "val":
            _expect_missing(lambda f=fresh: f.fit(train), "val", "fit without val")
            continue
        _expect_missing(
            lambda r=requirement, f=fresh: f.fit(_without(train, r), val=val), requirement, "fit"
        )
        if requirement != "labels":
            _expect_missing(
                lambda r=requirement: scorer.score(_without(test, r)), requirement, "score"
            )

    other = Outputs(logits=np.zeros((3, train.n_classes + 1)))
    try:
        scorer.score(other)
    except (ValueError, MissingOutputsError):
        pass
    else:
        raise AssertionError("scoring outputs with another number of classes must raise")

    separation = auroc(scores, scorer.score(ood))
    assert separation > 0.6, f"ID should score higher than OOD (AUROC {separation:.3f})"
