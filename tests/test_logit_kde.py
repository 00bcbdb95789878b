"""logit_kde against scipy.stats.gaussian_kde, grid against exact, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import gaussian_kde

import oodlens
from oodlens import Outputs


def kde(**params):
    return oodlens.create_scorer("logit_kde", **params)


def realistic_logits(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "bimodal":  # own-class logit high, others low, as a trained classifier gives
        labels = rng.integers(0, 3, n)
        z = rng.normal(-2, 0.7, size=(n, 3))
        z[np.arange(n), labels] = rng.normal(5, 1.2, n)
        return z
    if kind == "heavy_tailed":
        return rng.standard_t(df=2, size=(n, 3)) + np.array([0.0, 3.0, -2.0])
    if kind == "tied":  # logits stored at low precision: many exact ties
        return np.round(rng.normal(0, 2, size=(n, 3)) * 2) / 2
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("bandwidth", "bw_method"), [("scott", None), ("silverman", "silverman"), (0.3, 0.3)]
)
def test_exact_marginal_equals_scipy(bandwidth, bw_method):
    train = realistic_logits("bimodal", 700, 0)
    test = np.vstack([realistic_logits("bimodal", 200, 1), [[0.0, 0.0, 0.0], [8.0, -5.0, 1.0]]])
    scores = (
        kde(method="exact", bandwidth=bandwidth)
        .fit(Outputs(logits=train))
        .score(Outputs(logits=test))
    )
    ref = np.mean(
        [gaussian_kde(train[:, j], bw_method=bw_method).pdf(test[:, j]) for j in range(3)], axis=0
    )
    np.testing.assert_allclose(scores, ref, rtol=1e-10, atol=0)


def test_origin_bug_is_not_reproduced():
    # columns with different distributions: scoring column 2 with column 1's KDE would differ
    rng = np.random.default_rng(0)
    train = np.c_[rng.normal(3, 1, 500), rng.normal(-3, 1, 500)]
    test = np.array([[3.0, -3.0]])
    s = kde(method="exact").fit(Outputs(logits=train)).score(Outputs(logits=test))
    right = (gaussian_kde(train[:, 0]).pdf(3.0) + gaussian_kde(train[:, 1]).pdf(-3.0)) / 2
    buggy = (gaussian_kde(train[:, 0]).pdf(3.0) + gaussian_kde(train[:, 0]).pdf(-3.0)) / 2
    assert s[0] == pytest.approx(right[0], rel=1e-10)
    assert abs(s[0] - buggy[0]) > 0.1


@pytest.mark.parametrize("top_k", [1, 2])
def test_exact_class_conditional_equals_scipy(top_k):
    train = realistic_logits("bimodal", 900, 2)
    labels = np.argmax(train + np.random.default_rng(3).normal(0, 1.5, train.shape), axis=1)
    test = realistic_logits("bimodal", 150, 4)
    s = kde(mode="class_conditional", top_k=top_k, method="exact")
    s.fit(Outputs(logits=train, labels=labels))
    got = s.score(Outputs(logits=test))
    top = lambda z: -np.sort(-z, axis=1)[:, :top_k]  # noqa: E731
    pred = test.argmax(axis=1)
    ref = np.empty(len(test))
    for c in range(3):
        sel = pred == c
        ref[sel] = gaussian_kde(top(train[labels == c]).T).pdf(top(test[sel]).T)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", ["bimodal", "heavy_tailed", "tied"])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"bandwidth": "silverman"},
        {"mode": "class_conditional"},
        {"mode": "class_conditional", "top_k": 2},
    ],
    ids=["marginal", "silverman", "cc1", "cc2"],
)
def test_grid_matches_exact(kind, params):
    train = realistic_logits(kind, 3000, 5)
    labels = train.argmax(axis=1)
    test = np.vstack([realistic_logits(kind, 500, 6), train[:50], train[:10] + 1e4])
    exact = kde(method="exact", **params).fit(Outputs(logits=train, labels=labels))
    grid = kde(method="grid", **params).fit(Outputs(logits=train, labels=labels))
    e = exact.score(Outputs(logits=test))
    g = grid.score(Outputs(logits=test))
    # the largest density anywhere: the score's own maximum over a dense sample of train rows
    peak = exact.score(Outputs(logits=train)).max()
    assert np.max(np.abs(g - e)) <= 1e-3 * peak
    np.testing.assert_array_equal(g[-10:], 0.0)  # far beyond the training range


def test_memmap_streaming_equals_in_memory(tmp_path):
    logits = realistic_logits("bimodal", 5000, 7).astype(np.float32)
    mm = np.lib.format.open_memmap(
        tmp_path / "train.npy", mode="w+", dtype=np.float32, shape=logits.shape
    )
    mm[:] = logits
    mm.flush()
    loaded = np.load(tmp_path / "train.npy", mmap_mode="r")
    test = Outputs(logits=realistic_logits("bimodal", 100, 8))
    a = kde().fit(Outputs(logits=logits)).score(test)
    b = kde().fit(Outputs(logits=loaded)).score(test)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_streaming_chunks_give_the_same_fit(monkeypatch):
    import oodlens.scorers.logit_kde as mod

    train = Outputs(logits=realistic_logits("heavy_tailed", 2000, 9))
    test = Outputs(logits=realistic_logits("heavy_tailed", 300, 10))
    whole = kde().fit(train).score(test)
    monkeypatch.setattr(mod, "rows_per_chunk", lambda c, target=0: 37)  # many ragged chunks
    chunked = kde().fit(train).score(test)
    np.testing.assert_allclose(chunked, whole, rtol=1e-9, atol=1e-15)


def test_cv_bandwidth_prefers_narrow_kernel_on_multimodal_data():
    rng = np.random.default_rng(11)
    z = np.concatenate(
        [rng.normal(-6, 0.3, 1000), rng.normal(0, 0.3, 1000), rng.normal(6, 0.3, 1000)]
    )
    train = Outputs(logits=np.c_[z, rng.normal(size=3000)])
    fitted = kde(bandwidth="cv").fit(train)
    scott = 3000 ** (-1 / 5)
    assert fitted.bandwidth_factors_[0] < 0.6 * scott  # Scott oversmooths well-separated modes
    assert 0.5 * scott <= fitted.bandwidth_factors_[1] <= 2 * scott  # near Scott for a Gaussian
    # the chosen factor gives a better held-out likelihood than Scott's (independent check)
    held = np.concatenate(
        [rng.normal(-6, 0.3, 300), rng.normal(0, 0.3, 300), rng.normal(6, 0.3, 300)]
    )
    ll = lambda f: np.mean(np.log(gaussian_kde(z, bw_method=f).pdf(held)))  # noqa: E731
    assert ll(fitted.bandwidth_factors_[0]) > ll(scott)


def test_zero_variance_column_is_a_clear_error():
    z = np.c_[np.random.default_rng(0).normal(size=100), np.full(100, 2.0)]
    with pytest.raises(ValueError, match=r"logit column\(s\) \[1\] are constant"):
        kde().fit(Outputs(logits=z))


def test_small_class_raise_or_zero():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    labels = np.r_[np.zeros(30, int), np.ones(19, int), [2]]
    with pytest.raises(ValueError, match=r"class 2: 1 row\(s\), needs >= 2.*on_small_class='zero'"):
        kde(mode="class_conditional").fit(Outputs(logits=z, labels=labels))
    s = kde(mode="class_conditional", on_small_class="zero").fit(Outputs(logits=z, labels=labels))
    assert s.skipped_classes_ == (2,)
    test = np.array([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    scores = s.score(Outputs(logits=test))
    assert scores[0] == 0.0 and scores[1] >= 0.0


def test_class_conditional_needs_labels():
    with pytest.raises(oodlens.MissingOutputsError, match="requires 'labels'"):
        kde(mode="class_conditional").fit(
            Outputs(logits=np.random.default_rng(0).normal(size=(20, 2)))
        )


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"mode": "joint"}, "mode='joint' is not valid"),
        ({"method": "fft"}, "method='fft' is not valid"),
        ({"bandwidth": "scot"}, "bandwidth='scot' is not valid"),
        ({"bandwidth": -1.0}, "bandwidth=-1.0 is not valid"),
        ({"top_k": 5}, r"top_k=5 must be an integer in \[1, 3\]"),
        ({"grid_resolution": 1}, "grid_resolution=1"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        kde(**params).fit(Outputs(logits=realistic_logits("bimodal", 50, 0)))


def test_far_out_logits_score_zero_and_finite():
    s = kde().fit(Outputs(logits=realistic_logits("bimodal", 500, 0)))
    scores = s.score(Outputs(logits=np.array([[1e6, -1e6, 0.0], [1e300, 1e300, 1e300]])))
    assert np.all(np.isfinite(scores)) and scores[1] == 0.0


def test_density_matches_scipy_per_column():
    train = realistic_logits("bimodal", 800, 3)
    s = kde(method="exact").fit(Outputs(logits=train))
    xs = np.linspace(-5, 9, 50)
    np.testing.assert_allclose(s.density(xs, 1), gaussian_kde(train[:, 1]).pdf(xs), rtol=1e-10)


@pytest.mark.parametrize("mode", ["marginal", "class_conditional"])
def test_plot_writes_png(tmp_path, mode):
    from oodlens.plots import plot_logit_kde

    train = realistic_logits("bimodal", 600, 1)
    out = Outputs(logits=train, labels=train.argmax(axis=1), class_names=("a", "b", "c"))
    s = kde(mode=mode).fit(out)
    path = plot_logit_kde(s, out, tmp_path / "kde.png", threshold=0.04)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.parametrize("shape", [(5000, 1), (5000, 4)])
@pytest.mark.parametrize(
    "params", [{}, {"method": "exact"}, {"mode": "class_conditional", "top_k": 1}]
)
def test_fit_and_score_leave_inputs_untouched(shape, params):
    rng = np.random.default_rng(0)
    z = rng.normal(size=shape)
    labels = rng.integers(0, shape[1], shape[0])
    z_copy = z.copy()
    s = kde(**params).fit(Outputs(logits=z, labels=labels))
    s.score(Outputs(logits=z))
    np.testing.assert_array_equal(z, z_copy)


def test_multi_block_binning_equals_single_block():
    from oodlens.scorers import kde as _kde

    x = np.random.default_rng(0).normal(size=(1000, 4))
    lo, hi, h = x.min(0), x.max(0), np.full(4, 0.3)
    one = _kde.Grid1D(lo, hi, h)
    one.add_columns(x)
    many = _kde.Grid1D(lo, hi, h)
    many.add_columns(x, max_values=1000)  # one column per block
    np.testing.assert_array_equal(one.grid, many.grid)


def test_one_sided_caps_the_top_logit_at_the_class_mode():
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), labels] += rng.normal(5, 1, 600)  # the true class leads
    train = Outputs(logits=logits, labels=labels)
    test = Outputs(logits=rng.normal(0, 1, (300, 3)) * 3)
    s = oodlens.create_scorer(
        "logit_kde", mode="class_conditional", method="exact", one_sided=True
    ).fit(train)
    plain = oodlens.create_scorer("logit_kde", mode="class_conditional", method="exact").fit(train)
    pred, top = test.logits.argmax(1), test.logits.max(1)
    expected = np.empty(300)
    for c in range(3):
        rows = logits[labels == c].max(1)
        kde = gaussian_kde(rows)
        xs = np.linspace(rows.min(), rows.max(), 20001)
        mode = xs[np.argmax(kde(xs))]
        sel = pred == c
        expected[sel] = kde(np.minimum(top[sel], mode))
    np.testing.assert_allclose(s.score(test), expected, rtol=1e-4, atol=1e-9)
    below = top < s.modes_[pred]
    np.testing.assert_allclose(s.score(test)[below], plain.score(test)[below], rtol=1e-12)
    with pytest.raises(ValueError, match="one_sided=True needs mode='class_conditional'"):
        oodlens.create_scorer("logit_kde", one_sided=True).fit(train)


DEVICE_SETTINGS = [
    {},
    {"bandwidth": "cv"},
    {"method": "exact"},
    {"mode": "class_conditional"},
    {"mode": "class_conditional", "top_k": 2},
    {"mode": "class_conditional", "one_sided": True},
]


@pytest.mark.parametrize("params", DEVICE_SETTINGS)
def test_torch_path_equals_the_numpy_path(monkeypatch, tmp_path, params):
    """Inside oodlens.compute.compute_device the O(rows x classes) passes run in torch (here
    on the CPU, as on a GPU): the column statistics and the binning of the marginal fit,
    the marginal scoring and the class-conditional top-k. Same scores as numpy, in many
    ragged row blocks, fitted on memory-mapped float32 logits too."""
    import torch

    import oodlens.scorers.logit_kde as mod
    from oodlens.compute import compute_device

    def no_implicit_copy(self, *args, **kwargs):
        raise TypeError("implicit tensor -> numpy conversion (fails on a CUDA device)")

    monkeypatch.setattr(torch.Tensor, "__array__", no_implicit_copy)
    rng = np.random.default_rng(3)
    logits = realistic_logits("bimodal", 3000, 11)
    labels = logits.argmax(axis=1)
    flip = rng.random(3000) < 0.1  # some training rows labelled otherwise than predicted
    labels[flip] = rng.integers(0, 3, int(flip.sum()))
    np.save(tmp_path / "z.npy", logits.astype(np.float32))
    mapped = np.load(tmp_path / "z.npy", mmap_mode="r")
    far = [[1e3, -1e3, 50.0], [-40.0, 2.0, 400.0]]  # beyond the grids: density 0
    test = Outputs(logits=np.vstack([realistic_logits("heavy_tailed", 400, 12), far]))
    monkeypatch.setattr(mod, "rows_per_chunk", lambda c, target=0: 37)
    for train_logits in (logits, mapped):
        train = Outputs(logits=train_logits, labels=labels)
        expected = kde(**params).fit(train).score(test)
        with compute_device("cpu"):
            scorer = kde(**params).fit(train)
            got = scorer.score(test)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
        # fitted in the context, scored outside (and the reverse): the same
        np.testing.assert_allclose(scorer.score(test), expected, rtol=1e-9, atol=1e-15)
        with compute_device("cpu"):
            again = kde(**params).fit(train).score(test)
        np.testing.assert_allclose(again, expected, rtol=1e-9, atol=1e-15)
