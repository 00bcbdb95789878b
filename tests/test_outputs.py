from __future__ import annotations

import numpy as np
import pytest

from oodlens import Outputs


def test_valid_outputs_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    out = Outputs(
        logits=rng.normal(size=(10, 3)).astype(np.float32),
        labels=np.arange(10) % 3,
        features=rng.normal(size=(10, 5)),
        head_weight=rng.normal(size=(3, 5)),
        head_bias=np.zeros(3),
        class_names=("a", "b", "c"),
    )
    path = out.save(tmp_path / "out.npz")
    back = Outputs.load(path)
    for name in ("logits", "labels", "features", "head_weight", "head_bias"):
        np.testing.assert_array_equal(getattr(back, name), getattr(out, name))
        assert getattr(back, name).dtype == getattr(out, name).dtype
    assert back.class_names == ("a", "b", "c")
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    # the file holds no pickled object
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) >= {"logits", "labels", "features", "head_weight", "head_bias"}


def test_optional_fields_roundtrip(tmp_path):
    out = Outputs(logits=np.eye(3))
    back = Outputs.load(out.save(tmp_path / "x"))
    assert back.labels is None and back.features is None and not back.has_head
    np.testing.assert_array_equal(back.predictions, [0, 1, 2])


@pytest.mark.parametrize("field", ["logits", "features"])
def test_nan_rows_are_counted_and_named(field):
    logits = np.zeros((6, 2))
    features = np.zeros((6, 3))
    bad = {"logits": logits, "features": features}[field]
    bad[1, 0] = np.nan
    bad[4, 1] = np.inf
    bad[4, 0] = np.nan
    with pytest.raises(ValueError, match=rf"Outputs\.{field} has 2 row\(s\).*first at row 1"):
        Outputs(logits=logits, features=features)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": np.zeros(5)}, r"logits must be a 2-D array.*Reshape"),
        ({"logits": np.zeros((0, 3))}, "empty"),
        ({"logits": np.array([["a", "b"]])}, "real numbers"),
        (
            {"logits": np.zeros((3, 2)), "labels": np.zeros(4, int)},
            r"labels must have shape \(3,\)",
        ),
        ({"logits": np.zeros((3, 2)), "labels": np.array([0.5, 1, 1])}, "fractional"),
        ({"logits": np.zeros((3, 2)), "labels": np.array([0, -2, 1])}, "-1 for an unknown"),
        ({"logits": np.zeros((3, 2)), "features": np.zeros((2, 4))}, "2 rows but logits has 3"),
        ({"logits": np.zeros((3, 2)), "head_weight": np.zeros((2, 4))}, "given together"),
        (
            {"logits": np.zeros((3, 2)), "head_weight": np.zeros((3, 4)), "head_bias": np.zeros(3)},
            r"head_weight must be \(C, D\)",
        ),
        (
            {
                "logits": np.zeros((3, 2)),
                "features": np.zeros((3, 5)),
                "head_weight": np.zeros((2, 4)),
                "head_bias": np.zeros(2),
            },
            "expects 4 features",
        ),
        ({"logits": np.zeros((3, 2)), "class_names": ("a",)}, "1 names for 2 classes"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Outputs(**kwargs)


def test_integer_logits_are_converted_and_memmap_not_copied(tmp_path):
    assert Outputs(logits=np.array([[1, 2], [3, 4]])).logits.dtype == np.float64
    mm = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=np.float32, shape=(100, 3))
    mm[:] = 1.0
    out = Outputs(logits=mm)
    assert isinstance(out.logits, np.memmap)


def test_frozen():
    out = Outputs(logits=np.zeros((2, 2)))
    with pytest.raises(AttributeError):
        out.logits = np.ones((2, 2))


def test_correct_and_subset():
    out = Outputs(logits=np.array([[2.0, 0], [0, 1], [3, 0]]), labels=np.array([0, 0, 0]))
    np.testing.assert_array_equal(out.correct(), [True, False, True])
    sub = out.subset(np.array([True, False, True]))
    assert sub.n_samples == 2 and sub.correct().all()
    with pytest.raises(ValueError, match="no \\(or unknown\\) labels"):
        Outputs(logits=np.zeros((2, 2))).correct()


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", None])
def test_load_corrupt_or_missing(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content is None:
        with pytest.raises(FileNotFoundError, match="No Outputs file"):
            Outputs.load(path)
        return
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable oodlens Outputs file"):
        Outputs.load(path)


def test_load_foreign_npz(tmp_path):
    np.savez(tmp_path / "foreign.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="not an oodlens Outputs file"):
        Outputs.load(tmp_path / "foreign.npz")


def test_streamed_percentile_equals_numpy_with_many_ties():
    """Post-ReLU features are mostly exact zeros: the percentiles that fall on them (and
    those above) equal numpy's, and the search stops at the tie instead of narrowing a
    window towards zero pass after pass."""
    from oodlens.arrays import streamed_percentile

    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(4000, 64)) - 0.8, 0.0)  # about 79% zeros
    y = np.round(rng.normal(size=(3000, 7)), 1)  # ties everywhere
    for array in (x, y):
        for q in (0, 1, 10, 50, 78.9, 79.5, 90, 99, 100):
            want = float(np.percentile(array, q))
            assert streamed_percentile(array, q, max_values=1000) == pytest.approx(want, abs=1e-12)
