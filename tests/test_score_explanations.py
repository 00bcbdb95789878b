"""Explaining the OOD score (issue 24): score targets for Grad-CAM and Integrated Gradients,
checked against captum called directly, a network with a known answer, completeness and
the sign option."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import oodlens
from oodlens.explainers import GradCAM, IntegratedGradients, ScoreTarget
from oodlens.network import forward_all


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its networks and images from the same seed, whatever ran before."""
    torch.manual_seed(0)


class RegionNet(nn.Module):
    """A tiny timm-like CNN whose features see only the top-left quarter of the image: its
    stage's activations are zero elsewhere, so any score's evidence lies there."""

    def __init__(self, classes: int = 3, size: int = 16) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, size, size)
        mask[..., : size // 2, : size // 2] = 1.0
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Identity()  # the masked activations: the Grad-CAM layer
        self.fc = nn.Linear(8, classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(torch.relu(self.conv(x)) * self.mask)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _fitted(model: nn.Module, name: str, size: int, **params) -> oodlens.Scorer:
    with torch.no_grad():
        logits, feats = forward_all(model.eval(), torch.rand(200, 3, size, size))
    head = model.get_classifier()
    train = oodlens.Outputs(
        logits=logits.double().numpy(),
        labels=np.arange(200) % logits.shape[1],
        features=feats.double().numpy(),
        head_weight=head.weight.detach().double().numpy(),
        head_bias=head.bias.detach().double().numpy(),
    )
    return oodlens.create_scorer(name, **params).fit(train)


@pytest.mark.parametrize("name", ["energy", "knn", "logit_kde", "mahalanobis"])
def test_score_grad_cam_equals_captum_on_a_module_computing_the_score(name):
    from captum.attr import LayerAttribution, LayerGradCam

    model = timm.create_model("resnet18", num_classes=3).eval()
    scorer = _fitted(model, name, 32, **({"k": 5} if name == "knn" else {}))
    x = torch.rand(3, 3, 32, 32)
    ours = GradCAM(model, layer="layer3", score=scorer, normalize=False).explain(x)

    class NegatedScore(nn.Module):
        def forward(self, inp):
            logits, feats = forward_all(model, inp)
            head = (model.fc.weight, model.fc.bias)
            return -scorer.torch_score(logits, feats, head)[:, None]

    frozen = [p.requires_grad_(False) for p in model.parameters()]
    cam = LayerGradCam(NegatedScore(), model.layer3).attribute(x, target=0, relu_attributions=True)
    direct = LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")[:, 0]
    assert len(frozen) and float(ours.abs().max()) > 0
    torch.testing.assert_close(ours, direct.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("explainer", ["gradcam", "ig"])
@pytest.mark.parametrize("name", ["energy", "knn", "logit_kde"])
def test_the_score_map_s_mass_lies_where_the_features_look(explainer, name):
    model = RegionNet().eval()
    scorer = _fitted(model, name, 16, **({"k": 5} if name == "knn" else {}))
    x = torch.rand(8, 3, 16, 16)
    if explainer == "gradcam":
        maps = GradCAM(model, layer="stage", score=scorer, normalize=False).explain(x)
    else:
        maps = IntegratedGradients(model, score=scorer, n_steps=64).explain(x).clamp(min=0)
    # the stage sees the top-left 8 x 8 activations; through its 3 x 3 convolution, the
    # pixels of the top-left 9 x 9 (its receptive field)
    edge = 9 if explainer == "ig" else 8
    inside = maps[:, :edge, :edge].sum((1, 2))
    total = maps.sum((1, 2))
    # a Grad-CAM map may be all zero (the ReLU of a negative weighted sum): where there is
    # mass, it lies in the region
    shown = total > 0
    assert int(shown.sum()) >= 2
    assert (inside[shown] / total[shown]).min() > 0.999


def test_integrated_gradients_is_complete_and_its_sign_flips():
    model = timm.create_model("resnet18", num_classes=3).eval()
    scorer = _fitted(model, "energy", 32)
    x = torch.rand(3, 3, 32, 32)
    foreign = IntegratedGradients(model, score=scorer, n_steps=64)
    maps = foreign.explain(x)
    target = ScoreTarget(model, scorer, "foreign")
    with torch.no_grad():
        change = target(x) - target(torch.zeros_like(x))
    # completeness: the attributions sum to F(x) - F(baseline), within 1%
    np.testing.assert_allclose(maps.sum((1, 2)).numpy(), change.numpy(), rtol=0.01, atol=1e-4)
    assert foreign.last_delta.abs().max() <= 0.01 * change.abs().max()
    familiar = IntegratedGradients(model, score=scorer, sign="familiar", n_steps=64).explain(x)
    torch.testing.assert_close(familiar, -maps, rtol=1e-4, atol=1e-6)
    up = GradCAM(model, layer="layer3", score=scorer, relu=False, normalize=False)
    down = GradCAM(
        model, layer="layer3", score=scorer, sign="familiar", relu=False, normalize=False
    )
    torch.testing.assert_close(up.explain(x), -down.explain(x), rtol=1e-5, atol=1e-6)
    assert up.last_scores is not None and up.last_scores.shape == (3,)


def test_class_targets_are_unchanged_and_a_scorer_without_a_torch_form_is_named():
    model = timm.create_model("resnet18", num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    plain = GradCAM(model, layer="layer3").explain(x, target=1)
    assert plain.shape == (2, 32, 32)
    ig = IntegratedGradients(model, n_steps=16)
    maps = ig.explain(x, target=1)
    with torch.no_grad():
        change = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    np.testing.assert_allclose(maps.sum((1, 2)).numpy(), change.numpy(), rtol=0.02, atol=1e-3)
    gradnorm = _fitted(model, "gradnorm", 32)
    with pytest.raises(TypeError, match="'gradnorm' has no differentiable score"):
        GradCAM(model, score=gradnorm)
    energy = _fitted(model, "energy", 32)
    with pytest.raises(ValueError, match="leave target='predicted'"):
        GradCAM(model, layer="layer3", score=energy).explain(x, target=1)
    with pytest.raises(oodlens.InvalidParameterError, match="sign='up'"):
        oodlens.create_explainer("gradcam", model, score=energy, sign="up")
    assert "integrated_gradients" in oodlens.list_explainers()


# --- the command line -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """A tiny checkpoint on digits 0-2 and a few test digits as PNG files."""
    from PIL import Image as PILImage

    from oodlens.train import TrainConfig, train_model

    root = tmp_path_factory.mktemp("explain")
    ckpt = root / "net.safetensors"
    cfg = TrainConfig(data="digits:0-2", img_size=16, epochs=1, batch_size=128, hflip=False)
    train_model(cfg, ckpt, progress=False)
    source = oodlens.load_dataset("digits:0-2@test")
    files = []
    for i in range(3):
        path = root / f"d{i}.png"
        source.loader(i).save(path)
        files.append(path)
    noise = root / "noise.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)).save(noise)
    return ckpt, [*files, noise], root


@pytest.mark.slow
@pytest.mark.parametrize("explainer", ["gradcam", "integrated_gradients"])
def test_explain_target_score_writes_maps_and_a_figure(digits_files, tmp_path, capsys, explainer):
    from oodlens import cli

    ckpt, files, _ = digits_files
    maps = tmp_path / "maps.npz"
    argv = [
        "explain", *files, "--model", "resnet18", "--checkpoint", ckpt, "--img-size", "16",
        "--scorers", "energy", "knn:k=5", "--target", "score", "--explainer", explainer,
        "--layer", "layer2", "--steps", "8", "--save-maps", maps, "--out", tmp_path / "e.png",
        "--cache-dir", tmp_path / "c", "-q",
    ]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "score maps of energy" in out and "score maps of knn:k=5" in out
    data = np.load(maps)
    assert list(data["ids"]) == [str(f) for f in files]
    assert data["class_maps"].shape == (4, 16, 16) and data["class_maps"].dtype == np.float32
    assert list(data["scorers"]) == ["energy", "knn:k=5"]
    assert data["score_maps"].shape == (2, 4, 16, 16)
    assert (tmp_path / "e.png").stat().st_size > 0


@pytest.mark.slow
def test_explain_names_a_scorer_without_a_differentiable_score(digits_files, tmp_path, capsys):
    from oodlens import cli

    ckpt, files, _ = digits_files
    argv = [
        "explain", files[0], "--model", "resnet18", "--checkpoint", ckpt, "--img-size", "16",
        "--scorers", "gradnorm", "--target", "score", "--out", tmp_path / "e.png",
        "--cache-dir", tmp_path / "c", "-q",
    ]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "'gradnorm' has no differentiable score" in err and "explainable" in err
    assert not (tmp_path / "e.png").exists()


@pytest.mark.slow
def test_explain_with_a_saved_detector(digits_files, tmp_path, capsys):
    from oodlens import cli

    ckpt, files, _ = digits_files
    det = tmp_path / "kde.oodlens"
    fit = ["fit", "--model", "resnet18", "--checkpoint", ckpt, "--id", "digits:0-2",
           "--img-size", "16", "--scorer", "logit_kde", "--alpha", "0.2", "--out", det,
           "--cache-dir", tmp_path / "c", "-q"]  # fmt: skip
    assert cli.main([str(a) for a in fit]) == 0
    argv = ["explain", *files, "--detector", det, "--target", "score", "--layer", "layer2",
            "--out", tmp_path / "e.png", "-q"]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "p(logit_kde)=" in out and ("(accepted)" in out or "(REJECTED)" in out)
    assert "score maps of logit_kde" in out
