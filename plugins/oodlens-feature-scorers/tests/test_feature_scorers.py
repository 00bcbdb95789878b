"""The oodlens-feature-scorers plugin: discovery through its installed metadata, each scorer
against an independent computation, parity with pytorch-ood, memory-mapped and blocked
computation, and parameter validation. Uses oodlens's public API only."""

from __future__ import annotations

import tracemalloc
from importlib.metadata import entry_points

import numpy as np
import oodlens_feature_scorers
import pytest
from scipy.special import logsumexp
from scipy.stats import spearmanr
from sklearn.neighbors import NearestNeighbors

import oodlens
from oodlens.registry import list_entries
from oodlens.testing import synthetic_outputs

PLUGIN = "oodlens-feature-scorers"
NAMES = ("knn", "mahalanobis", "react", "vim")


@pytest.fixture(scope="module")
def data():
    train = synthetic_outputs(600, n_classes=4, dim=16, seed=0)
    test = oodlens.Outputs(
        logits=np.vstack(
            [
                synthetic_outputs(100, seed=1).logits,
                synthetic_outputs(100, seed=2, kind="ood").logits,
            ]
        ),
        features=np.vstack(
            [
                synthetic_outputs(100, seed=1).features,
                synthetic_outputs(100, seed=2, kind="ood").features,
            ]
        ),
        head_weight=train.head_weight,
        head_bias=train.head_bias,
    )
    return train, test


def test_discovered_through_installed_entry_point():
    eps = [
        ep for ep in entry_points(group="oodlens") if ep.dist is not None and ep.dist.name == PLUGIN
    ]
    assert [ep.value for ep in eps] == ["oodlens_feature_scorers"]
    by_name = {e.name: e for e in list_entries("scorer")}
    for name in NAMES:
        assert by_name[name].distribution == PLUGIN
        assert by_name[name].plugin == f"{PLUGIN}:feature_scorers"


def test_mahalanobis_against_numpy(data):
    train, test = data
    f, y = train.features, train.labels
    means = np.array([f[y == c].mean(0) for c in range(4)])
    cov = sum((f[y == c] - means[c]).T @ (f[y == c] - means[c]) for c in range(4)) / len(f)
    prec = np.linalg.inv(cov + 1e-6 * np.trace(cov) / 16 * np.eye(16))
    expected = np.array([-min((x - m) @ prec @ (x - m) for m in means) for x in test.features])
    got = oodlens.create_scorer("mahalanobis").fit(train).score(test)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("use_faiss", [False, True])
def test_knn_against_sklearn(data, use_faiss):
    train, test = data
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nn = NearestNeighbors(n_neighbors=7).fit(norm(train.features))
    dist, _ = nn.kneighbors(norm(test.features))
    got = oodlens.create_scorer("knn", k=7, use_faiss=use_faiss).fit(train).score(test)
    np.testing.assert_allclose(got, -dist[:, -1], rtol=1e-5, atol=1e-5)


def test_vim_step_by_step(data):
    train, test = data
    w, b, f = train.head_weight, train.head_bias, train.features
    u = -np.linalg.lstsq(w, b, rcond=None)[0]  # the new origin (full-rank head: exact)
    x = f - u
    eigval, eigvec = np.linalg.eigh(
        np.cov(x.T, bias=True, aweights=None) + np.outer(x.mean(0), x.mean(0))
    )
    ns = eigvec[:, np.argsort(eigval)[: 16 - 8]]  # the 8 smallest directions: D - dim with dim=8
    alpha = (f @ w.T + b).max(axis=1).mean() / np.linalg.norm(x @ ns, axis=1).mean()
    vlogit = np.linalg.norm((test.features - u) @ ns, axis=1) * alpha
    expected = logsumexp(test.features @ w.T + b, axis=1) - vlogit
    got = oodlens.create_scorer("vim", dim=8).fit(train).score(test)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7)


def test_vim_origin_is_the_minimum_norm_solution_for_a_rank_deficient_head():
    """A head whose rows sum to zero (softmax-equivalent) is rank C-1 up to rounding: its
    smallest singular value (~1e-14 relative in practice) must be dropped, not inverted, so
    the origin is the minimum-norm solution, and the scores match pytorch-ood's ViM."""
    train = synthetic_outputs(600, n_classes=4, dim=64, seed=0)
    test = synthetic_outputs(200, n_classes=4, dim=64, seed=1)
    uu, sv, vt = np.linalg.svd(train.head_weight - train.head_weight.mean(axis=0), False)
    sv[-1] = 5e-15 * sv[0]  # rounding noise: above numpy's default cut-off, below max(C, D)*eps
    w = (uu * sv) @ vt
    b = train.head_bias + 0.3  # a softmax-equivalent head: any common shift of the bias
    assert np.allclose(w.sum(axis=0), 0.0, atol=1e-12)

    def with_head(o):
        return oodlens.Outputs(
            logits=o.features @ w.T + b, labels=o.labels, features=o.features,
            head_weight=w, head_bias=b,
        )  # fmt: skip

    tr, te = with_head(train), with_head(test)
    vim = oodlens.create_scorer("vim", dim=32).fit(tr)
    r = w.shape[0] - 1  # minimum-norm solution from the SVD truncated at the true rank
    expected = -(vt[:r].T @ ((uu[:, :r].T @ b) / sv[:r]))
    np.testing.assert_allclose(vim.origin_, expected, atol=1e-9)
    assert np.linalg.norm(np.linalg.pinv(w) @ b) > 1e3 * np.linalg.norm(expected)  # the old way
    torch = pytest.importorskip("torch")
    pood = pytest.importorskip("pytorch_ood.detector")
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    theirs = pood.ViM(None, d=32, w=t(w), b=t(b)).fit_features(t(tr.features), None)
    theirs = theirs.predict_features(t(te.features)).numpy()
    assert spearmanr(vim.score(te), -theirs).statistic >= 0.9999


def test_react_by_hand(data):
    train, test = data
    tau = np.percentile(train.features, 80)
    expected = logsumexp(
        np.minimum(test.features, tau) @ train.head_weight.T + train.head_bias, axis=1
    )
    got = oodlens.create_scorer("react", percentile=80).fit(train).score(test)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def _rank_equal(ours, theirs):
    assert (
        np.corrcoef(ours, -theirs)[0, 1] > 1 - 1e-6 or spearmanr(ours, -theirs).statistic > 1 - 1e-9
    )


def test_parity_with_pytorch_ood(data):
    torch = pytest.importorskip("torch")
    pood = pytest.importorskip("pytorch_ood.detector")
    train, test = data
    z = torch.tensor(train.features, dtype=torch.float32)
    y = torch.tensor(train.labels)
    zt = torch.tensor(test.features, dtype=torch.float32)
    w, b = (
        torch.tensor(train.head_weight, dtype=torch.float32),
        torch.tensor(train.head_bias, dtype=torch.float32),
    )

    theirs = pood.Mahalanobis(None).fit_features(z, y).predict_features(zt).numpy()
    _rank_equal(oodlens.create_scorer("mahalanobis").fit(train).score(test), theirs)

    theirs = pood.KNN(None, k=10).fit_features(z, y).predict_features(zt).numpy()
    np.testing.assert_allclose(
        oodlens.create_scorer("knn", k=10).fit(train).score(test), -theirs, atol=1e-5
    )

    theirs = pood.ViM(None, d=8, w=w, b=b).fit_features(z, y).predict_features(zt).numpy()
    np.testing.assert_allclose(
        oodlens.create_scorer("vim", dim=8).fit(train).score(test), -theirs, rtol=1e-4, atol=1e-4
    )

    react = pood.ReAct(backbone=lambda x: x, head=lambda f: f @ w.T + b, percentile=0.9)
    react.fit_feature_maps(z, y)
    theirs = react.predict_feature_maps(zt).numpy()
    np.testing.assert_allclose(
        oodlens.create_scorer("react").fit(train).score(test), -theirs, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("name", "drop", "missing"),
    [
        ("knn", "features", "features"),
        ("mahalanobis", "features", "features"),
        ("vim", "head", "head_weight"),
        ("react", "head", "head_weight"),
    ],
)
def test_missing_fields_are_named(data, name, drop, missing):
    train, _ = data
    kwargs = {
        "logits": train.logits,
        "labels": train.labels,
        "features": train.features,
        "head_weight": train.head_weight,
        "head_bias": train.head_bias,
    }
    if drop == "features":
        kwargs["features"] = None
    else:
        kwargs["head_weight"] = kwargs["head_bias"] = None
    with pytest.raises(oodlens.MissingOutputsError, match=rf"requires '{drop}'.*no {missing}"):
        oodlens.create_scorer(name).fit(oodlens.Outputs(**kwargs))


def test_bad_inputs(data):
    train, _ = data
    labels = train.labels.copy()
    labels[labels == 2] = 1
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no training rows"):
        oodlens.create_scorer("mahalanobis").fit(
            oodlens.Outputs(logits=train.logits, labels=labels, features=train.features)
        )
    unknown = train.labels.copy()
    unknown[0] = -1
    with pytest.raises(ValueError, match=r"mahalanobis: training labels must be in \[0, 4\)"):
        oodlens.create_scorer("mahalanobis").fit(
            oodlens.Outputs(logits=train.logits, labels=unknown, features=train.features)
        )
    few = train.subset(slice(0, 10))
    with pytest.raises(ValueError, match=r"k=50 must be an integer in \[1, 10\]"):
        oodlens.create_scorer("knn").fit(few)
    with pytest.raises(ValueError, match=r"dim=16 must be an integer in \[1, 15\]"):
        oodlens.create_scorer("vim", dim=16).fit(train)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("knn", {"k": 0}, r"k=0 is not valid; it must be an int in \[1, inf\)"),
        ("knn", {"k": 2.5}, r"k=2.5 is not valid; it must be an int in \[1, inf\)"),
        ("knn", {"use_faiss": "yes"}, r"use_faiss='yes' is not valid; it must be True or False"),
        (
            "react",
            {"percentile": 0},
            r"percentile=0 is not valid; it must be a float in \(0, 100\]",
        ),
        ("react", {"percentile": 101}, r"percentile=101 is not valid; .* \(0, 100\]"),
        ("mahalanobis", {"reg": -1}, r"reg=-1 is not valid; it must be a float in \[0, inf\)"),
        ("mahalanobis", {"reg": float("nan")}, r"reg=nan is not valid"),
        ("vim", {"dim": 0}, r"dim=0 is not valid; it must be an int in \[1, inf\) or None"),
    ],
)
def test_parameter_constraints_fail_before_fit(name, params, message):
    with pytest.raises(oodlens.InvalidParameterError, match=message):
        oodlens.create_scorer(name, **params)


def test_parameter_constraints_checked_again_at_fit(data):
    train, _ = data
    scorer = oodlens.create_scorer("react")
    scorer.percentile = 0
    with pytest.raises(oodlens.InvalidParameterError, match=r"percentile=0 is not valid"):
        scorer.fit(train)


def test_singular_covariance_is_regularised(data):
    train, test = data
    feats = np.hstack([train.features, np.zeros((train.n_samples, 4))])  # dead units: singular
    t = oodlens.Outputs(logits=train.logits, labels=train.labels, features=feats)
    s = (
        oodlens.create_scorer("mahalanobis")
        .fit(t)
        .score(
            oodlens.Outputs(
                logits=test.logits, features=np.hstack([test.features, np.zeros((200, 4))])
            )
        )
    )
    assert np.isfinite(s).all()
    with pytest.raises(ValueError, match="covariance is singular"):
        oodlens.create_scorer("mahalanobis", reg=0.0).fit(t)


SETTINGS = [
    ("mahalanobis", {}),
    ("knn", {"k": 7, "use_faiss": False}),
    ("knn", {"k": 1, "use_faiss": False}),
    ("vim", {"dim": 8}),
    ("react", {"percentile": 80}),
]


def _memmapped(outputs, tmp_path, tag):
    """The same outputs with memory-mapped (read-only) float32 features."""
    path = tmp_path / f"{tag}.npy"
    np.save(path, outputs.features.astype(np.float32))
    features = np.load(path, mmap_mode="r")
    assert isinstance(features, np.memmap)
    return oodlens.Outputs(
        logits=outputs.logits,
        labels=outputs.labels,
        features=features,
        head_weight=outputs.head_weight,
        head_bias=outputs.head_bias,
    )


def _as_float32(outputs):
    return oodlens.Outputs(
        logits=outputs.logits,
        labels=outputs.labels,
        features=outputs.features.astype(np.float32),
        head_weight=outputs.head_weight,
        head_bias=outputs.head_bias,
    )


@pytest.mark.parametrize(("name", "params"), SETTINGS)
def test_memmap_features_score_as_in_memory(data, tmp_path, name, params):
    train, test = data
    mm_train, mm_test = _memmapped(train, tmp_path, "train"), _memmapped(test, tmp_path, "test")
    expected = oodlens.create_scorer(name, **params).fit(_as_float32(train))
    got = oodlens.create_scorer(name, **params).fit(mm_train)
    assert isinstance(mm_train.features, np.memmap)  # fitting did not replace the memmap
    np.testing.assert_allclose(
        got.score(mm_test), expected.score(_as_float32(test)), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(got.score(test), expected.score(test), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "params"), SETTINGS)
@pytest.mark.parametrize("memmap", [False, True])
def test_many_small_blocks_equal_one_block(data, tmp_path, monkeypatch, name, params, memmap):
    train, test = data
    if memmap:
        train, test = _memmapped(train, tmp_path, "train"), _memmapped(test, tmp_path, "test")
    monkeypatch.setattr(oodlens_feature_scorers, "BLOCK_VALUES", 1 << 30)
    one = oodlens.create_scorer(name, **params).fit(train)
    one_scores = one.score(test)
    calls = []
    real = oodlens_feature_scorers.iter_row_chunks

    def counting(array, rows):
        calls.append(rows)
        return real(array, rows)

    monkeypatch.setattr(oodlens_feature_scorers, "iter_row_chunks", counting)
    monkeypatch.setattr("oodlens.compute.iter_row_chunks", counting)  # behind row_blocks
    monkeypatch.setattr(oodlens_feature_scorers, "BLOCK_VALUES", 64)  # a few rows per block
    many = oodlens.create_scorer(name, **params).fit(train)
    many_scores = many.score(test)
    assert calls and max(calls) < 50  # the plugin did read in small blocks
    np.testing.assert_allclose(many_scores, one_scores, rtol=1e-10, atol=1e-10)
    for attr, value in vars(one).items():
        if attr.endswith("_") and isinstance(value, np.ndarray):
            np.testing.assert_allclose(vars(many)[attr], value, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("streamed", [True, False])
def test_memmap_is_never_loaded_whole(tmp_path, monkeypatch, streamed):
    """Fitting and scoring on memory-mapped features allocate about one block, never a
    float64 copy of the whole matrix (25.6 MB here; knn and nnguide keep a float32 bank, or,
    ``streamed`` (a bank over IN_MEMORY_BANK_BYTES), a reference to the features and one
    scale per row; every scorer keeps an 8-byte fingerprint per fitting row for conformal
    checks)."""
    rng = np.random.default_rng(0)
    n, d, c = 100_000, 32, 4
    path = tmp_path / "features.npy"
    np.save(path, rng.normal(size=(n, d)).astype(np.float32))
    head_weight, head_bias = rng.normal(size=(c, d)), rng.normal(size=c)
    train = oodlens.Outputs(
        logits=np.zeros((n, c)),
        labels=np.arange(n) % c,
        features=np.load(path, mmap_mode="r"),
        head_weight=head_weight,
        head_bias=head_bias,
    )
    test = train.subset(slice(0, 1000))
    monkeypatch.setattr(oodlens_feature_scorers, "BLOCK_VALUES", 1 << 15)  # 1024 rows
    whole64 = n * d * 8
    bank = 0 if streamed else n * d * 4
    if streamed:
        monkeypatch.setattr(oodlens_feature_scorers, "IN_MEMORY_BANK_BYTES", 0)
    for name, params, fit_extra in [
        ("mahalanobis", {}, 0),
        ("vim", {"dim": 16}, 0),
        ("knn", {"k": 5, "use_faiss": False}, bank + 2 * n * 8),  # the (N,) inverse norms
        ("nnguide", {"k": 5}, 2 * bank + 3 * n * 8),  # float64 bank, and (N,) energies
    ]:
        scorer = oodlens.create_scorer(name, **params)
        tracemalloc.start()
        try:
            scorer.fit(train)
            fit_peak = tracemalloc.get_traced_memory()[1]
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            scorer.score(test)
            score_peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        # plus O(N) for the core's fingerprints of the fitting rows (8 bytes a row, sorted)
        assert fit_peak < fit_extra + 3 * n * 8 + whole64 // 8, (name, fit_peak)
        assert score_peak < whole64 // 8, (name, score_peak)
    # react: the threshold is oodlens.arrays.streamed_percentile; scoring is blocked here
    scorer = oodlens.create_scorer("react").fit(train)
    tracemalloc.start()
    try:
        scorer.score(train)
        score_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert score_peak < n * 8 + whole64 // 8, score_peak  # the (N,) scores plus blocks


def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, oodlens_feature_scorers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rmd_she_nnguide_by_hand(data):
    train, test = data
    f, y, z = train.features, train.labels, train.logits
    # RMD: class Mahalanobis (shared covariance / N) minus a background Gaussian's distance
    means = np.stack([f[y == k].mean(0) for k in range(4)])
    centred = f - means[y]
    prec = np.linalg.inv(
        centred.T @ centred / len(f)
        + 1e-6 * np.eye(16) * np.trace(centred.T @ centred / len(f)) / 16
    )
    bg = f.mean(0)
    prec0 = np.linalg.inv(
        np.cov(f.T, bias=True) + 1e-6 * np.eye(16) * np.trace(np.cov(f.T, bias=True)) / 16
    )
    t = test.features
    dk = np.stack([np.einsum("nd,dk,nk->n", t - m, prec, t - m) for m in means], axis=1)
    d0 = np.einsum("nd,dk,nk->n", t - bg, prec0, t - bg)
    np.testing.assert_allclose(
        oodlens.create_scorer("rmd").fit(train).score(test), -(dk.min(1) - d0), rtol=1e-6, atol=1e-6
    )
    # SHE: inner product with the mean feature of correctly predicted training rows of the class
    ok = z.argmax(1) == y
    patterns = np.stack([f[ok & (y == k)].mean(0) for k in range(4)])
    pred = test.logits.argmax(1)
    np.testing.assert_allclose(
        oodlens.create_scorer("she").fit(train).score(test),
        np.sum(t * patterns[pred], axis=1),
        rtol=1e-10,
    )
    # NNGuide: energy times mean of the k largest similarities to energy-scaled unit features
    bank = f / np.linalg.norm(f, axis=1, keepdims=True) * logsumexp(z, axis=1)[:, None]
    sim = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ bank.T
    expected = logsumexp(test.logits, axis=1) * np.sort(sim, axis=1)[:, -7:].mean(1)
    np.testing.assert_allclose(
        oodlens.create_scorer("nnguide", k=7).fit(train).score(test), expected, rtol=1e-10
    )


def test_rmd_she_nnguide_parity_with_pytorch_ood(data):
    torch = pytest.importorskip("torch")
    pood = pytest.importorskip("pytorch_ood.detector")
    train, test = data
    z = torch.tensor(train.features, dtype=torch.float32)  # pytorch-ood works in float32
    y = torch.tensor(train.labels)
    zt = torch.tensor(test.features, dtype=torch.float32)
    w = torch.tensor(train.head_weight, dtype=torch.float32)
    b = torch.tensor(train.head_bias, dtype=torch.float32)

    def head(f):
        return f @ w.T + b

    theirs = pood.RMD(None).fit_features(z, y).predict_features(zt).numpy()
    ours = oodlens.create_scorer("rmd").fit(train).score(test)
    assert spearmanr(ours, -theirs).statistic >= 0.999
    theirs = pood.SHE(lambda x: x, head).fit_features(z, y).predict_features(zt).numpy()
    ours = oodlens.create_scorer("she").fit(train).score(test)
    np.testing.assert_allclose(ours, -theirs, rtol=1e-4, atol=1e-4)
    theirs = pood.NNGuide(lambda x: x, head, k=10).fit_features(z, y).predict_features(zt).numpy()
    ours = oodlens.create_scorer("nnguide", k=10).fit(train).score(test)
    np.testing.assert_allclose(ours, -theirs, rtol=1e-4, atol=1e-4)


DEVICE_SETTINGS = [
    ("knn", {"k": 7, "use_faiss": False}),
    ("nnguide", {"k": 5}),
    ("mahalanobis", {}),
    ("rmd", {}),
    ("vim", {"dim": 8}),
    ("react", {"percentile": 80}),
    ("react", {"percentile": 90, "percentile_on": "val"}),
    ("she", {}),
]


@pytest.mark.parametrize(("name", "params"), DEVICE_SETTINGS)
@pytest.mark.parametrize("resident", [False, True])
def test_torch_path_equals_the_numpy_path(data, tmp_path, monkeypatch, name, params, resident):
    """Inside oodlens.compute.compute_device the scorers run in torch (here on the CPU, as
    on a GPU): the same scores as numpy, with memory-mapped float16 features and small
    blocks; ``resident``: the features, the nearest-neighbour bank and ReAct's sort kept on
    the device (what a CUDA device with room does), else streamed to it block by block."""
    import torch

    from oodlens.compute import compute_device

    def no_implicit_copy(self, *args, **kwargs):
        raise TypeError("implicit tensor -> numpy conversion (fails on a CUDA device)")

    # as on CUDA, where np.asarray(tensor) fails: every copy back must be explicit
    monkeypatch.setattr(torch.Tensor, "__array__", no_implicit_copy)
    train, test = data
    val = train.subset(slice(0, 200))
    half = tmp_path / "f16.npy"
    np.save(half, train.features.astype(np.float16))
    mm_train = oodlens.Outputs(
        logits=train.logits,
        labels=train.labels,
        features=np.load(half, mmap_mode="r"),
        head_weight=train.head_weight,
        head_bias=train.head_bias,
    )
    monkeypatch.setattr(oodlens_feature_scorers, "BLOCK_VALUES", 16 * 50)  # 50-row blocks
    if not resident:  # the numpy path's nearest-neighbour banks streamed too
        monkeypatch.setattr(oodlens_feature_scorers, "IN_MEMORY_BANK_BYTES", 0)
    if resident:
        budget = lambda device, share=0.25: 1 << 40  # noqa: E731
        monkeypatch.setattr(oodlens_feature_scorers, "device_memory_budget", budget)
        monkeypatch.setattr("oodlens.compute.device_memory_budget", budget)
    for fit_on in (train, mm_train):
        expected = oodlens.create_scorer(name, **params).fit(fit_on, val=val).score(test)
        with compute_device("cpu"):
            scorer = oodlens.create_scorer(name, **params).fit(fit_on, val=val)
            got = scorer.score(test)
        if name in ("knn", "nnguide"):  # fitted on a device: no bank built in host memory
            assert scorer.bank_.scale is not None and scorer.bank_.features is fit_on.features
        # float32 products for the neighbour searches, float64 elsewhere
        tol = 1e-5 if name in ("knn", "nnguide") else 1e-9
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
        # fitted outside the context, scored inside (and the reverse): the same
        np.testing.assert_allclose(scorer.score(test), expected, rtol=tol, atol=tol)


def test_methods_v2_parity_with_pytorch_ood(data):
    """fDBD, NCI, pNML, LTS, VRA and GMM against pytorch-ood 0.4.0's detectors on the same
    features (sign-adjusted: their scores are higher for OOD)."""
    torch = pytest.importorskip("torch")
    pood = pytest.importorskip("pytorch_ood.detector")
    train, test = data
    z = torch.tensor(train.features, dtype=torch.float32)
    y = torch.tensor(train.labels)
    zt = torch.tensor(test.features, dtype=torch.float32)
    linear = torch.nn.Linear(z.shape[1], train.n_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(train.head_weight))
        linear.bias.copy_(torch.tensor(train.head_bias))

    def ours(spec, **params):
        return oodlens.create_scorer(spec, **params).fit(train).score(test)

    def check(mine, theirs):
        rho = spearmanr(mine, -theirs.detach().numpy()).statistic
        assert rho >= 0.999, rho

    check(ours("fdbd"), pood.fDBD(None, linear).fit_features(z).predict_features(zt))
    check(ours("nci", alpha=0.0), pood.NCI(None, linear).fit_features(z).predict_features(zt))
    check(
        ours("nci", alpha=0.01),
        pood.NCI(None, linear, alpha=0.01).fit_features(z).predict_features(zt),
    )
    check(ours("pnml"), pood.PNML(None, linear).fit_features(z, y).predict_features(zt))
    check(ours("lts", p=0.1), pood.LTS(None, linear, p=0.1).predict_features(zt))
    vra = pood.VRA(
        None, lambda maps: linear(maps.flatten(1)), lower_percentile=0.05, upper_percentile=0.95
    )
    check(
        ours("vra", percentile_low=5, percentile_high=95, per_dimension=True),
        vra.fit_feature_maps(z[:, :, None, None], y).predict_feature_maps(zt[:, :, None, None]),
    )
    check(ours("gmm", reg=1e-3), pood.GMM(None, reg=1e-3).fit_features(z, y).predict_features(zt))


def test_methods_v2_against_numpy(data):
    """The formulas, written out here on the raw arrays."""
    train, test = data
    f, t, w, b = train.features, test.features, train.head_weight, train.head_bias
    mu = f.mean(0)
    z = t @ w.T + b
    pred = z.argmax(1)
    # NCI: cosine-like alignment with the predicted class's weights plus alpha * L1 norm
    want = np.array(
        [
            w[p] @ (x - mu) / np.linalg.norm(x - mu) + 1e-3 * np.abs(x).sum()
            for x, p in zip(t, pred, strict=True)
        ]
    )
    np.testing.assert_allclose(
        oodlens.create_scorer("nci", alpha=1e-3).fit(train).score(test), want, rtol=1e-9
    )
    # fDBD: mean over the other classes of |z_pred - z_c| / ||w_pred - w_c||, over ||x - mu||
    want = np.array(
        [
            np.mean([abs(zz[p] - zz[c]) / np.linalg.norm(w[p] - w[c]) for c in range(4) if c != p])
            / np.linalg.norm(x - mu)
            for x, zz, p in zip(t, z, pred, strict=True)
        ]
    )
    np.testing.assert_allclose(
        oodlens.create_scorer("fdbd").fit(train).score(test), want, rtol=1e-9
    )
    # VRA, OpenOOD's form: one pair of thresholds over all training feature values
    lo, hi = np.percentile(f, 10), np.percentile(f, 90)
    want = logsumexp(np.clip(t, lo, hi) @ w.T + b, axis=1)
    np.testing.assert_allclose(oodlens.create_scorer("vra").fit(train).score(test), want, rtol=1e-9)
    # GMM: log of the class-weighted sum of Gaussian densities (scipy's)
    from scipy.stats import multivariate_normal

    y = train.labels
    dens = sum(
        np.mean(y == c)
        * multivariate_normal(
            f[y == c].mean(0), np.cov(f[y == c].T, bias=True) + 1e-4 * np.eye(16)
        ).pdf(t)
        for c in range(4)
    )
    np.testing.assert_allclose(
        oodlens.create_scorer("gmm", reg=1e-4).fit(train).score(test), np.log(dens), rtol=1e-7
    )


def test_methods_v2_refuse_bad_settings(data):
    train, _ = data
    with pytest.raises(oodlens.errors.InvalidParameterError, match="percentile_low"):
        oodlens.create_scorer("vra", percentile_low=95, percentile_high=90)
    big = oodlens.create_scorer("gmm")
    big.MAX_STATE_BYTES = 1000
    with pytest.raises(ValueError, match="precision per class"):
        big.fit(train)


def test_relation_against_openood_formula(data):
    """OpenOOD's relation postprocessor (openood/postprocessors/relation_postprocessor.py),
    its formula re-typed here in numpy: unit features with a 1e-10 guard, kernel =
    clamp(f . f_t, 0) * (p . p_t), edges above 0.03 kept, sign(r) |r|^pow summed."""
    train, test = data

    def unit(f):
        return f / np.sqrt((f**2).sum(-1) + 1e-10)[:, None]

    def probs(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    for power in (1, 2):
        rel = np.clip(unit(test.features) @ unit(train.features).T, 0, None) * (
            probs(test.logits) @ probs(train.logits).T
        )
        masked = rel * (np.abs(rel) > 0.03)
        want = (np.sign(masked) * np.abs(masked) ** power).sum(-1)
        got = oodlens.create_scorer("relation", power=power).fit(train).score(test)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    big = oodlens.create_scorer("relation")
    big.MAX_BANK_BYTES = 1000
    with pytest.raises(ValueError, match="use knn"):
        big.fit(train)


def test_openmax_parity_with_pytorch_ood_and_its_weibull_fit(data):
    torch = pytest.importorskip("torch")
    pood = pytest.importorskip("pytorch_ood.detector")
    from scipy.stats import weibull_min

    train, test = data
    om = pood.OpenMax(None, tailsize=25, alpha=4, euclid_weight=1.0)
    om.fit_logits(torch.tensor(train.logits), torch.tensor(train.labels))
    theirs = om.predict_logits(torch.tensor(test.logits)).numpy()
    scorer = oodlens.create_scorer("openmax", tailsize=25, alpha=4, correct_only=False)
    ours = scorer.fit(train).score(test)
    assert spearmanr(ours, -theirs).statistic >= 0.999
    np.testing.assert_allclose(ours, -theirs, atol=1e-6)
    # each class's fit is scipy's Weibull of its 25 largest distances to the class mean
    z, y = train.logits, train.labels
    for k in range(4):
        d = np.sort(np.linalg.norm(z[y == k] - z[y == k].mean(0), axis=1))[-25:]
        shape, _, scale = weibull_min.fit(d + 10000 - d.min(), floc=0)
        assert scorer.shape_[k] == pytest.approx(shape, rel=1e-3)
        assert scorer.scale_[k] == pytest.approx(scale, rel=1e-3)
    # the default uses correctly classified rows only (the paper's, OpenOOD's)
    assert oodlens.create_scorer("openmax").fit(train).score(test).shape == (len(test.logits),)
