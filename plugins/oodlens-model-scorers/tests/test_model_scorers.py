"""The oodlens-model-scorers plugin: each scorer against a computation written here and
against pytorch-ood 0.4.0's detector of the same name on the same inputs (a timm resnet18
trained from scratch on digits for the model-aware ones), and the model-aware kind through
the harness. Uses oodlens's public API only."""

from __future__ import annotations

import copy

import numpy as np
import oodlens_model_scorers
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import spearmanr

import oodlens
from oodlens.backbones import build_transform
from oodlens.extract import extract_outputs
from oodlens.scorers import ModelInputs
from oodlens.testing import synthetic_outputs
from oodlens.train import TrainConfig, train_model

NAMES = ("odin", "gradnorm", "ash", "scale", "dice")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A resnet18 trained on digits 0-4 (32 px, 2 epochs), its outputs on 200 training and
    120 test images + 120 OOD images (digits 5-9), and those images as tensors."""
    ckpt = tmp_path_factory.mktemp("m") / "m.safetensors"
    train_model(TrainConfig(data="digits:0-4", epochs=2, hflip=False), ckpt, progress=False)
    model, cfg = oodlens.create_backbone("resnet18", checkpoint=ckpt)
    transform, data_cfg = build_transform(model, cfg.img_size)
    out = {}
    for key, spec, n in (
        ("train", "digits:0-4@train", 200),
        ("test", "digits:0-4@test", 60),
        ("ood", "digits:5-9", 60),
    ):
        src = oodlens.load_dataset(spec)
        src = src.subset(range(n), spec)
        x = torch.stack([transform(src.loader(i)) for i in range(len(src))])
        o = extract_outputs(model, src, transform, tuple(data_cfg["input_size"]), progress=False)
        out[key] = (o, x)
    test = _concat(out["test"][0], out["ood"][0])
    x_test = torch.cat([out["test"][1], out["ood"][1]])
    return model, tuple(data_cfg["std"]), out["train"], (test, x_test)


def _concat(a, b):
    return oodlens.Outputs(
        logits=np.vstack([a.logits, b.logits]),
        features=np.vstack([a.features, b.features]),
        head_weight=a.head_weight,
        head_bias=a.head_bias,
    )


def _inputs(model, std, x):
    def batches():
        for s in range(0, len(x), 32):
            yield x[s : s + 32], torch.zeros(len(x[s : s + 32]), dtype=torch.long)

    return ModelInputs(model, batches, torch.device("cpu"), std, len(x))


def test_discovered_and_light():
    entries = {e.name: e for e in oodlens.registry.list_entries("scorer")}
    assert {entries[n].distribution for n in NAMES} == {"oodlens-model-scorers"}
    assert len(oodlens.list_scorers()) >= 20


def test_needs_depend_on_the_parameters():
    assert "model" in oodlens.create_scorer("odin").requirements()
    for name in ("ash", "scale", "gradnorm"):
        assert "model" not in oodlens.create_scorer(name).requirements()
    assert "model" in oodlens.create_scorer("ash", layer="layer4").requirements()
    assert "model" in oodlens.create_scorer("gradnorm", layer="layer4.1.conv2").requirements()
    with pytest.raises(oodlens.MissingOutputsError, match="requires 'model'"):
        oodlens.create_scorer("odin").fit(synthetic_outputs(50))
    with pytest.raises(oodlens.InvalidParameterError, match="variant='x' is not valid"):
        oodlens.create_scorer("ash", variant="x")


def test_shaping_by_hand():
    a = np.array([[4.0, 0.0, 1.0, 3.0], [1.0, 1.0, 2.0, 0.5]])
    ash = oodlens.create_scorer("ash", variant="s", percentile=50)
    ash_p = oodlens.create_scorer("ash", variant="p", percentile=50)
    ash_b = oodlens.create_scorer("ash", variant="b", percentile=50)
    # keep the top 2 of 4: row 0 keeps 4, 3 (sum 8 -> 7), row 1 keeps 2, 1 (first of the ties)
    kept = np.array([[4.0, 0, 0, 3.0], [0, 1.0, 2.0, 0]])
    np.testing.assert_allclose(ash_p._shape(a)[0], kept[0])
    np.testing.assert_allclose(ash_b._shape(a)[0], [4.0, 0, 0, 4.0])  # 8 / 2
    np.testing.assert_allclose(ash._shape(a)[0], kept[0] * np.exp(8 / 7))
    scale = oodlens.create_scorer("scale", percentile=50)
    np.testing.assert_allclose(scale._shape(a)[0], a[0] * np.exp(8 / 7))
    np.testing.assert_allclose(scale._shape(a)[1], a[1] * np.exp(4.5 / 3))


def test_dice_and_gradnorm_by_hand(digits):
    _, _, (train, _), (test, _) = digits
    w, b = train.head_weight.astype(float), train.head_bias.astype(float)
    contrib = w * train.features.mean(0)
    mask = contrib > np.percentile(contrib, 70)
    expected = logsumexp(test.features @ (w * mask).T + b, axis=1)
    got = oodlens.create_scorer("dice", percentile=70).fit(train).score(test)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    # GradNorm's closed form equals autograd on the head's weight
    fc = torch.nn.Linear(w.shape[1], w.shape[0]).double()
    fc.weight.data, fc.bias.data = torch.tensor(w), torch.tensor(b)
    norms = []
    for f in torch.tensor(test.features[:20], dtype=torch.float64):
        fc.zero_grad()
        loss = -torch.log_softmax(fc(f[None]) / 2.0, dim=1).mean()
        loss.backward()
        norms.append(float(fc.weight.grad.abs().sum()))
    got = oodlens.create_scorer("gradnorm", temperature=2.0).fit(train).score(test)[:20]
    np.testing.assert_allclose(got, norms, rtol=1e-6)


def test_odin_by_hand(digits):
    model, std, (train, x_train), (test, x) = digits
    got = (
        oodlens.create_scorer("odin")
        .fit(train, model=_inputs(model, std, x_train))
        .score(test.subset(slice(0, 8)), model=_inputs(model, std, x[:8]))
    )
    xs = x[:8].clone().requires_grad_(True)
    logits = model(xs) / 1000.0
    torch.nn.functional.cross_entropy(logits, logits.argmax(1)).backward()
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        z = (model(x[:8] - 0.0014 * xs.grad.sign() / s) / 1000.0).double().numpy()
    np.testing.assert_allclose(got, softmax(z, axis=1).max(1), rtol=1e-6)


def test_parity_with_pytorch_ood(digits):
    pood = pytest.importorskip("pytorch_ood.detector")
    model, std, (train, x_train), (test, x) = digits
    fc = model.get_classifier()
    ood_std = list(std)
    mi_train = _inputs(model, std, x_train)

    def rho(ours, theirs):
        return spearmanr(ours, -np.asarray(theirs)).statistic

    mi = _inputs(model, std, x)
    ours = oodlens.create_scorer("odin").fit(train, model=mi_train).score(test, model=mi)
    theirs = pood.ODIN(model, eps=0.0014, temperature=1000.0, norm_std=ood_std).predict(x)
    assert rho(ours, theirs.detach().numpy()) >= 0.999

    ours = oodlens.create_scorer("gradnorm").fit(train).score(test)
    theirs = pood.GradNorm(model, param_filter=lambda n: n == "fc.weight").predict(x)
    assert rho(ours, theirs.detach().numpy()) >= 0.999
    layer = "layer4.1.conv2"
    g = oodlens.create_scorer("gradnorm", layer=layer)
    ours = g.fit(train, model=mi_train).score(test, model=mi)
    theirs = pood.GradNorm(model, param_filter=lambda n: n.startswith(layer + ".")).predict(x)
    assert rho(ours, theirs.detach().numpy()) >= 0.999

    def pooled_head(a):
        return fc(a.mean(dim=(2, 3)))

    feats = torch.tensor(test.features)[:, :, None, None].float()
    for variant in ("p", "b", "s"):
        ours = oodlens.create_scorer("ash", variant=variant).fit(train).score(test)
        det = pood.ASH(lambda a: a, pooled_head, variant=f"ash-{variant}", percentile=0.65)
        assert rho(ours, det.predict(feats).detach().numpy()) >= 0.999, variant
    ours = oodlens.create_scorer("scale").fit(train).score(test)
    theirs = pood.SCALE(lambda a: a, pooled_head, percentile=0.85).predict(feats)
    assert rho(ours, theirs.detach().numpy()) >= 0.999
    # on an inner layer: the last feature map before pooling, in a model-aware pass
    ash4 = oodlens.create_scorer("ash", layer="layer4").fit(train, model=mi_train)
    theirs = pood.ASH(model.forward_features, pooled_head, variant="ash-s", percentile=0.65)
    assert rho(ash4.score(test, model=mi), theirs.predict(x).detach().numpy()) >= 0.999
    scale4 = oodlens.create_scorer("scale", layer="layer4").fit(train, model=mi_train)
    theirs = pood.SCALE(model.forward_features, pooled_head, percentile=0.85)
    assert rho(scale4.score(test, model=mi), theirs.predict(x).detach().numpy()) >= 0.999

    w, b = torch.tensor(train.head_weight), torch.tensor(train.head_bias)
    dice = pood.DICE(None, w=w, b=b, p=0.9)
    dice.fit_features(torch.tensor(train.features), torch.zeros(train.n_samples, dtype=torch.long))
    theirs = dice.predict_features(torch.tensor(test.features)).numpy()
    ours = oodlens.create_scorer("dice").fit(train).score(test)
    assert rho(ours, theirs) >= 0.999


def test_vit_features_are_refused():
    vit_like = synthetic_outputs(100, seed=0)  # features with negative values
    for name in ("ash", "scale"):
        with pytest.raises(ValueError, match="not defined for them"):
            oodlens.create_scorer(name).fit(vit_like)


def test_harness_runs_model_aware_scorers_in_their_own_pass(tmp_path):
    from oodlens.bench import expand_scorers, run_benchmark

    def names(specs):
        return [s.text for s in expand_scorers(specs)]

    assert "odin" not in names(["all"]) and "odin" in names(["all+model"])
    res = run_benchmark(
        scorers=("msp", "odin", "ash:layer=layer4"),
        train={"epochs": 1, "hflip": False},
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    assert not res.failures, res.failures
    assert {"model-aware odin", "model-aware ash:layer=layer4"} <= set(res.timings)
    assert set(res.table.scorer) == {"msp", "odin", "ash:layer=layer4"}
    scores = res.runs[0].scores["odin"]
    assert scores["id"].shape == (res.runs[0].outputs["id_test"].n_samples,)


def test_on_a_vision_transformer():
    """ODIN and GradNorm run on a ViT; ASH on a token layer refuses with a message."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        feats = vit.forward_head(vit.forward_features(x), pre_logits=True).double().numpy()
    head = vit.get_classifier()
    outputs = oodlens.Outputs(
        logits=feats @ head.weight.detach().double().numpy().T
        + head.bias.detach().double().numpy(),
        features=feats,
        head_weight=head.weight.detach().double().numpy(),
        head_bias=head.bias.detach().double().numpy(),
    )
    mi = _inputs(vit, (0.5, 0.5, 0.5), x)
    odin = oodlens.create_scorer("odin").fit(outputs, model=mi).score(outputs, model=mi)
    assert odin.shape == (6,) and np.isfinite(odin).all()
    grad = oodlens.create_scorer("gradnorm", layer="head").fit(outputs).score(outputs)
    assert np.isfinite(grad).all()
    ash = oodlens.create_scorer("ash", layer="blocks.11").fit(outputs, model=mi)
    with pytest.raises(ValueError, match=r"needs a \(B, C, H, W\) activation map"):
        ash.score(outputs, model=mi)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ash", {}),
        ("ash", {"variant": "p", "percentile": 80}),
        ("ash", {"variant": "b"}),
        ("scale", {}),
        ("dice", {}),
        ("gradnorm", {}),
    ],
)
def test_torch_path_equals_the_numpy_path(digits, monkeypatch, name, params):
    """Inside oodlens.compute.compute_device the output-based paths run in torch (here on
    the CPU, as on a GPU): the same scores as numpy, with implicit tensor -> numpy copies
    forbidden as on CUDA. The digits features are post-ReLU, with exact zeros: ASH "b"
    shapes on the host so that ties at the cut pick the same positions."""
    from oodlens.compute import compute_device

    def no_implicit_copy(self, *args, **kwargs):
        raise TypeError("implicit tensor -> numpy conversion (fails on a CUDA device)")

    _, _, (train, _), (test, _) = digits
    expected = oodlens.create_scorer(name, **params).fit(train).score(test)
    monkeypatch.setattr(torch.Tensor, "__array__", no_implicit_copy)
    with compute_device("cpu"):
        got = oodlens.create_scorer(name, **params).fit(train).score(test)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_torch_shaping_equals_numpy_without_ties():
    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(20, 64)))
    t = torch.tensor(a)
    for variant in ("p", "b", "s"):
        np.testing.assert_allclose(
            oodlens_model_scorers.ash_shape(t, 70, variant).numpy(),
            oodlens_model_scorers.ash_shape(a, 70, variant),
            rtol=1e-12,
        )
    np.testing.assert_allclose(
        oodlens_model_scorers.scale_shape(t, 70).numpy(),
        oodlens_model_scorers.scale_shape(a, 70),
        rtol=1e-12,
    )


def test_methods_v2_parity_with_pytorch_ood(digits):
    pood = pytest.importorskip("pytorch_ood.detector")
    model, std, (train, x_train), (test, x) = digits
    mi_train = _inputs(model, std, x_train)

    def rho(ours, theirs):
        return spearmanr(ours, -np.asarray(theirs.detach().numpy())).statistic

    # GradUncertainty: the head's closed form, and autograd on an inner layer
    ours = oodlens.create_scorer("grad_uncertainty").fit(train).score(test)
    theirs = pood.GradUncertainty(model, param_filter=lambda n: n.startswith("fc.")).predict(x)
    assert rho(ours, theirs) >= 0.999
    layer = "layer4.1.conv2"
    scorer = oodlens.create_scorer("grad_uncertainty", layer=layer).fit(train, model=mi_train)
    ours = scorer.score(test, model=_inputs(model, std, x))
    theirs = pood.GradUncertainty(model, param_filter=lambda n: n.startswith(layer + "."))
    assert rho(ours, theirs.predict(x)) >= 0.999

    # RankFeat on the last stage (layer4: forward_features' output for a timm resnet), at
    # 64 px: at 32 px layer4's map is 1 x 1, a rank-1 matrix that the removal empties
    x64 = torch.nn.functional.interpolate(x, size=64, mode="bilinear")
    ours = (
        oodlens.create_scorer("rankfeat")
        .fit(train, model=mi_train)
        .score(test, model=_inputs(model, std, x64))
    )
    theirs = pood.RankFeat(model.forward_features, model.forward_head).predict(x64)
    assert rho(ours, theirs) >= 0.999
    with pytest.raises(ValueError, match="1 x 1 map"):
        oodlens.create_scorer("rankfeat").fit(train, model=mi_train).score(
            test, model=_inputs(model, std, x)
        )

    # Mahalanobis with input preprocessing, at pytorch-ood's step, with the same Gaussians:
    # 512 features from 200 rows make the covariance singular, where the two ridges (ours
    # relative, theirs 1e-6 absolute on an unnormalised sum, inverted in float32) differ;
    # the fit is mahalanobis's, tested against pytorch-ood in the feature plugin's tests
    scorer = oodlens.create_scorer("mahalanobis_odin", reg=0.01, magnitude=0.002)
    ours = scorer.fit(train, model=mi_train).score(test, model=_inputs(model, std, x))
    det = pood.MahalanobisODIN(
        lambda images: model.forward_head(model.forward_features(images), pre_logits=True),
        eps=0.002,
        norm_std=list(std),
    )
    det.fit_features(torch.tensor(train.features), torch.tensor(train.labels))
    det._base.mu = torch.tensor(scorer.means_, dtype=torch.float32)
    det._base.precision = torch.tensor(scorer.precision_, dtype=torch.float32)
    assert rho(ours, det.predict(x)) >= 0.999
    plain = oodlens.create_scorer("mahalanobis", reg=0.01).fit(train).score(test)
    assert spearmanr(ours, plain).statistic < 0.9999  # the step changes the scores

    # Monte-Carlo dropout: the trained network with dropout before its head, the same masks
    dropped = copy.deepcopy(model)
    dropped.drop_rate = 0.5
    for mode in ("mean", "var"):
        scorer = oodlens.create_scorer("mcd", samples=8, mode=mode, seed=3).fit(
            train, model=mi_train
        )
        ours = scorer.score(
            test,
            model=ModelInputs(
                dropped, lambda: [(x, torch.zeros(len(x)))], torch.device("cpu"), std, len(x)
            ),
        )
        torch.manual_seed(3)
        theirs = pood.MCD(dropped, samples=8, mode=mode).predict(x)
        assert rho(ours, theirs) >= 0.999, mode
    assert not dropped.training  # restored


def test_nac_parity_with_pytorch_ood(digits):
    pood = pytest.importorskip("pytorch_ood.detector")
    model, std, (train, x_train), (test, x) = digits
    scorer = oodlens.create_scorer("nac", o_star=5)
    ours = scorer.fit(train, model=_inputs(model, std, x_train)).score(
        test, model=_inputs(model, std, x)
    )
    assert [c.shape for c in scorer.counts_] == [(256, 50), (512, 50)]  # layer3, layer4
    assert all(c.sum() == c.shape[0] * len(x_train) for c in scorer.counts_)  # one bin each
    det = pood.NACUE(model, layers=[model.layer3, model.layer4], o_star=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train), batch_size=64)
    theirs = det.fit(loader).predict(x)
    assert spearmanr(ours, -theirs.numpy()).statistic >= 0.999
    np.testing.assert_allclose(ours, -theirs.numpy(), rtol=1e-5, atol=1e-6)


def _openood_adascale(model, x_fit, x, variant):
    """AdaScale re-typed from OpenOOD's AdaScalePostprocessor and AdaScaleANet/LNet (read,
    not copied): the perturbation, the ECDF of Q' on the fitting images, ada_scale."""
    fc = model.get_classifier()

    def features(data):
        return model.forward_head(model.forward_features(data), pre_logits=True)

    def perturbed(data):
        data = data.clone().requires_grad_(True)
        output = model(data)
        labels = output.detach().argmax(dim=1)
        output[torch.arange(len(labels)), labels].backward(torch.ones(len(labels)))
        grad = data.grad.detach()
        b, c, h, w = data.shape
        n_pixels = int(c * h * w * 0.05)
        idx = torch.topk(grad.abs().view(b, -1), n_pixels, dim=1, largest=False)[1]
        mask = torch.zeros(b, c * h * w).scatter_(1, idx, 1).view(b, c, h, w)
        with torch.no_grad():
            f, f2 = features(data), features(data + grad.sign() * mask * 0.5)
        return f, f2, (f - f2).abs()

    def q(f, f2, shift):
        k1, k2 = int(f.shape[1] * 5 / 100), int(f.shape[1] * 1 / 100)
        a = torch.gather(torch.relu(f2), 1, torch.topk(f, k=k1, dim=1)[1]).sum(1)
        return a + 10 * torch.gather(shift, 1, torch.topk(f, k=k2, dim=1)[1]).sum(1)

    log = q(*perturbed(x_fit)).numpy()
    f, f2, shift = perturbed(x)
    ecdf = (log[None, :] <= q(f, f2, shift).numpy()[:, None]).mean(1)
    percentile = torch.tensor(75 + (1 - ecdf) * (85 - 75))
    a = torch.relu(f)
    n = a.shape[1]
    ks = n - torch.round(n * percentile / 100.0).to(torch.int)
    values = torch.topk(a, int(ks.max()), dim=1)[0]
    keep = torch.arange(int(ks.max()))[None, :] < ks[:, None]
    scale = a.sum(1, keepdim=True) / (values * keep).sum(1, keepdim=True)
    with torch.no_grad():
        logits = fc(f) * scale**2 if variant == "l" else fc(f * torch.exp(scale))
    return torch.logsumexp(logits, dim=1).numpy()


@pytest.mark.parametrize("variant", ["a", "l"])
def test_adascale_against_openood_formula(digits, variant):
    model, std, (train, x_train), (test, x) = digits
    scorer = oodlens.create_scorer("adascale", variant=variant)
    ours = scorer.fit(train, model=_inputs(model, std, x_train)).score(
        test, model=_inputs(model, std, x)
    )
    expected = _openood_adascale(model, x_train, x, variant)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_iodin_against_openood_formula(digits):
    model, std, (train, x_train), (test, x) = digits
    t, eps = 1000.0, 0.0014
    ours = (
        oodlens.create_scorer("iodin")
        .fit(train, model=_inputs(model, std, x_train))
        .score(test, model=_inputs(model, std, x))
    )
    # re-typed from OpenOOD's IODINPostprocessor (read, not copied): ODIN's cross-entropy
    # gradient, kept only at each image's element of largest |gradient|
    expected = []
    for s in range(0, len(x), 32):
        data = x[s : s + 32].clone().requires_grad_(True)
        output = model(data)
        loss = torch.nn.functional.cross_entropy(output / t, output.detach().argmax(1))
        loss.backward()
        grad = data.grad.detach()
        mask = torch.zeros(grad.shape[0], grad[0].numel())
        mask[torch.arange(len(grad)), grad.abs().flatten(1).argmax(1)] = 1
        step = (torch.ge(grad, 0).float() - 0.5) * 2
        for c in range(3):
            step[:, c] = step[:, c] / std[c]
        moved = data.detach() - eps * step * mask.view_as(grad)
        with torch.no_grad():
            expected.append(torch.softmax(model(moved).double() / t, dim=1).max(1).values)
    np.testing.assert_allclose(ours, torch.cat(expected).numpy(), rtol=1e-6)


def test_applicability_through_the_harness(tmp_path, capsys):
    from oodlens.cli import main

    args = [
        "bench",
        "--id",
        "digits:0-2",
        "--ood",
        "far=noise:gaussian,n=30",
        "--epochs",
        "4",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert main([*args, "--scorers", "all+model", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "Not run: mcd does not apply to resnet18: it has no dropout" in out
    assert "Not run: rankfeat does not apply to resnet18: at 32 px its layer 'layer4'" in out
    assert "Not run: mcm does not apply to resnet18: it is not a CLIP zero-shot" in out
    assert "failed" not in out
    assert main([*args, "--scorers", "mcd", "--out", str(tmp_path / "b")]) == 2
    assert "Scorer 'mcd' does not apply to resnet18: it has no dropout" in capsys.readouterr().err
