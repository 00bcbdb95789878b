"""Grad-CAM: known answers, captum called directly, an independent hook-based computation,
timm CNNs and ViTs, state restoration, and the attention-area measures."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

import oodlens
from oodlens.explainers import GradCAM, attention_area, attention_area_mass, resolve_target_layer


class Tiny(nn.Module):
    """conv (identity kernel, 3x3 box kernel) -> global average pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.weight[1, 0] = 1.0
            self.fc.weight.copy_(torch.tensor([[1.0, -0.05], [0.2, 0.3]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_known_answer_on_hand_weighted_cnn():
    x = (
        np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]], dtype=np.float64)
        / 15
    )
    padded = np.pad(x, 1)
    box = np.array([[padded[i : i + 3, j : j + 3].sum() for j in range(4)] for i in range(4)])
    # dy0/dA_k = w_0k / 16 everywhere, so alpha = (1/16, -0.05/16); A_0 = x, A_1 = box sum
    cam = np.maximum(x / 16 - 0.05 * box / 16, 0)
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    raw = cam
    got = GradCAM(Tiny(), layer="conv").explain(
        torch.tensor(x, dtype=torch.float32)[None, None], target=0
    )
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-6)
    got_raw = GradCAM(Tiny(), layer="conv", normalize=False).explain(
        torch.tensor(x, dtype=torch.float32)[None, None], target=0
    )
    np.testing.assert_allclose(got_raw[0].numpy(), raw, atol=1e-7)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=5).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(6, 3, 64, 64)


def test_equals_captum_called_directly(resnet, images):
    pred = resnet(images).argmax(1)
    ref = LayerGradCam(resnet, resnet.layer4).attribute(images, target=pred, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (64, 64), interpolate_mode="bilinear")[:, 0]
    flat = ref.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    ref = ((flat - lo) / (hi - lo)).view_as(ref)
    got = GradCAM(resnet).explain(images)
    assert GradCAM(resnet).layer_name == "layer4"
    np.testing.assert_allclose(got.numpy(), ref.detach().numpy(), atol=1e-6)


def test_agrees_with_hook_based_gradcam(resnet, images):
    store = {}

    def fwd_hook(module, inp, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = resnet.layer4.register_forward_hook(fwd_hook)
    try:
        out = resnet(images)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * store["act"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, (64, 64), mode="bilinear", align_corners=False)[
        :, 0
    ].detach()
    got = GradCAM(resnet).explain(images)
    for a, b in zip(got, cam, strict=True):
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] >= 0.99


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet18", "layer4"), ("convnext_atto", "stages.3"), ("efficientnet_b0", "blocks.6")],
)
def test_cnn_auto_layer_and_maps(name, layer):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    g = GradCAM(model)
    assert g.layer_name == layer
    cams = g.explain(torch.rand(3, 3, 64, 48))
    assert cams.shape == (3, 64, 48)
    assert torch.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_vit_tokens_reshaped_to_patch_grid(size):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=size)
    g = GradCAM(model)
    assert g.layer_name == "blocks.11.norm1"
    x = torch.rand(2, 3, *size)
    cams = g.explain(x)
    assert cams.shape == (2, *size) and torch.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1
    # raw maps (no ReLU, nearest upsampling) are constant on each 16x16 patch of a h x w grid
    raw = GradCAM(model, relu=False, normalize=False, upsample="nearest").explain(x)
    h, w = size[0] // 16, size[1] // 16
    grid = raw[:, ::16, ::16]
    assert grid.shape == (2, h, w)
    torch.testing.assert_close(raw, grid.repeat_interleave(16, 1).repeat_interleave(16, 2))
    assert all(c.std() > 0 for c in grid)  # non-degenerate: patches differ
    assert isinstance(model.blocks[11].norm1, nn.LayerNorm)  # the model is given back intact


def test_explicit_layer_and_bad_name(resnet):
    assert GradCAM(resnet, layer="layer3.1").layer_name == "layer3.1"
    assert GradCAM(resnet, layer=resnet.layer2).layer_name == "layer2"
    with pytest.raises(
        ValueError,
        match=r"no layer .layer5.. Close matches: layer4, layer3.*Top-level modules: conv1",
    ):
        GradCAM(resnet, layer="layer5")
    with pytest.raises(ValueError, match="not part of the model"):
        resolve_target_layer(resnet, nn.Conv2d(1, 1, 1))


def test_model_state_restored():
    model = timm.create_model("resnet18", num_classes=3).train()
    model.fc.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    GradCAM(model).explain(torch.rand(2, 3, 32, 32))
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


def test_zero_gradients_give_zero_maps_not_nan():
    model = Tiny()
    with torch.no_grad():
        model.fc.weight.zero_()
    cams = GradCAM(model, layer="conv").explain(torch.rand(2, 1, 8, 8), target=0)
    assert torch.equal(cams, torch.zeros(2, 8, 8))


def test_targets(resnet, images):
    g = GradCAM(resnet)
    pred = resnet(images).argmax(1)
    np.testing.assert_allclose(
        g.explain(images).numpy(), g.explain(images, target=pred).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        g.explain(images, target=None).numpy(),
        g.explain(images, target=pred.tolist()).numpy(),
        atol=1e-6,
    )
    assert g.explain(images, target=2).shape == (6, 64, 64)
    torch.testing.assert_close(g.last_logits, resnet(images).detach(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="3 entries for 6 images"):
        g.explain(images, target=[0, 1, 2])
    with pytest.raises(ValueError, match="target='best'"):
        g.explain(images, target="best")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        g.explain(images[0])


def test_batching_is_invisible(resnet, images):
    a = GradCAM(resnet, batch_size=2).explain(images)
    b = GradCAM(resnet, batch_size=64).explain(images)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_attention_area_known_areas():
    maps = np.zeros((3, 10, 10))
    maps[0, :5, :] = 1.0  # half the image at full attention
    maps[1, :2, :2] = 0.6  # 4 pixels at 0.6
    maps[1, 2:4, :] = 0.4
    cams = torch.tensor(maps)
    np.testing.assert_allclose(attention_area(cams, 0.5), [0.5, 0.04, 0.0])
    np.testing.assert_allclose(attention_area(maps, 0.4), [0.5, 0.24, 0.0])
    np.testing.assert_allclose(attention_area(maps[0], 0.0), [1.0])


def test_attention_area_mass_known_areas():
    maps = np.zeros((3, 10, 10))
    maps[0, :5, :] = 1.0  # uniform on 50 pixels: 50% of mass in 25 pixels
    maps[1, 0, 0] = 9.0  # one pixel holds 90%
    maps[1, 1, :] = 0.1
    np.testing.assert_allclose(attention_area_mass(maps, 0.5), [0.25, 0.01, 0.0])
    np.testing.assert_allclose(
        attention_area_mass(maps * 7.3, 0.5), [0.25, 0.01, 0.0]
    )  # scale-free
    np.testing.assert_allclose(attention_area_mass(maps, 0.95), [0.48, 0.06, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        attention_area_mass(-maps)
    with pytest.raises(ValueError, match=r"mass must be in \(0, 1\]"):
        attention_area_mass(maps, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        attention_area(np.full((1, 2, 2), np.nan))


def test_registry():
    assert "gradcam" in oodlens.list_explainers()
    model = Tiny()
    g = oodlens.create_explainer("gradcam", model, layer="conv", upsample="nearest")
    assert isinstance(g, oodlens.Explainer) and g.upsample == "nearest"
    with pytest.raises(
        oodlens.UnknownNameError, match="Unknown explainer 'gradcm'.*Did you mean: gradcam"
    ):
        oodlens.create_explainer("gradcm", model)
    with pytest.raises(
        TypeError, match="Unknown parameter 'layr' for explainer 'gradcam'.*Did you mean: layer"
    ):
        oodlens.create_explainer("gradcam", model, layr="conv")
    with pytest.raises(ValueError, match="upsample='cubic'"):
        GradCAM(model, layer="conv", upsample="cubic")
