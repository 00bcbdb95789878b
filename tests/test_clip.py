"""CLIP zero-shot classifiers as a backbone kind (``clip:ARCH``), with a tiny open_clip
configuration and random weights (nothing can be downloaded here), and MCM on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import oodlens
from oodlens.backbones import build_transform, create_backbone
from oodlens.cli import main
from oodlens.network import forward_all

open_clip = pytest.importorskip("open_clip", reason="open_clip (the clip extra) not installed")

TINY = "clip:oodlens-tiny-clip"
NAMES = ("zero", "one", "two")


def test_head_is_the_scaled_cosine_to_the_class_prompts() -> None:
    model, cfg = create_backbone(TINY, class_names=NAMES)
    assert cfg.class_names == NAMES and cfg.num_classes == 3 and cfg.img_size == 32
    x = torch.rand(4, 3, 32, 32)
    logits, features = forward_all(model, x)
    # independently, from open_clip's encoders and tokenizer
    clip = model.clip
    tokens = open_clip.get_tokenizer("oodlens-tiny-clip")([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        text = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
        image = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
        expected = clip.logit_scale.exp() * image @ text.T
    np.testing.assert_allclose(logits.detach().numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features.norm(dim=1).detach().numpy(), 1.0, rtol=1e-6)
    _, data_cfg = build_transform(TINY)
    assert data_cfg["input_size"] == (3, 32, 32) and data_cfg["interpolation"] == "bicubic"


def test_weights_from_a_local_file(tmp_path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        other = open_clip.create_model("oodlens-tiny-clip")
    path = tmp_path / "tiny.pt"
    torch.save(other.state_dict(), path)
    loaded, _ = create_backbone(TINY, class_names=NAMES, checkpoint=path)
    random, _ = create_backbone(TINY, class_names=NAMES)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded.clip.encode_image(x).numpy(), other.encode_image(x).numpy(), atol=1e-5
        )
        assert not torch.allclose(loaded(x), random(x))
    with pytest.raises(ValueError, match="does not exist"):
        create_backbone(TINY, class_names=NAMES, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="Unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        create_backbone("clip:ViT-B-33", class_names=NAMES)
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        create_backbone("clip:ViT-B-32:nope", class_names=NAMES)


def test_mcm_parity_with_pytorch_ood() -> None:
    pood = pytest.importorskip("pytorch_ood.detector")
    model, _ = create_backbone(TINY, class_names=NAMES)
    x = torch.rand(40, 3, 32, 32)
    with torch.no_grad():
        logits, features = forward_all(model, x)
        embeddings = model.clip.encode_image(x)
    weight = model.get_classifier().weight.detach()
    outputs = oodlens.Outputs(
        logits=logits.numpy(),
        features=features.numpy(),
        head_weight=weight.numpy(),
        head_bias=np.zeros(3),
    )
    for t in (1.0, 0.01):
        ours = oodlens.create_scorer("mcm", temperature=t).fit(outputs).score(outputs)
        theirs = pood.MCM(None, text_embeddings=weight, temperature=t)
        theirs = -theirs.predict_features(embeddings).numpy()
        assert spearmanr(ours, theirs).statistic >= 0.999
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_bench_runs_a_zero_shot_model_on_digits(tmp_path, capsys) -> None:
    args = [
        "bench",
        "--model",
        TINY,
        "--id",
        "digits:0-4",
        "--ood",
        "far=noise:gaussian,n=40",
        "--scorers",
        "mcm",
        "msp",
        "knn",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    dets = tmp_path / "detectors"
    assert main([*args, "--out", str(tmp_path / "a"), "--save-detectors", str(dets)]) == 0
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    # a saved MCM detector rebuilds the zero-shot classifier (its class names recorded)
    images = tmp_path / "images"
    images.mkdir()
    source = oodlens.load_dataset("digits:0-4@test")
    for i in range(3):
        source.loader(i).save(images / f"{i}.png")
    detector = oodlens.Detector.load(next(dets.glob("*mcm*.oodlens")))
    verdicts = detector.predict(str(images))
    assert len(verdicts.ids) == 3 and np.isfinite(verdicts.scores).all()
    assert {r["scorer"] for r in result["summary"]} == {"mcm", "msp", "knn"}
    assert {r["backbone"] for r in result["summary"]} == {TINY}
    assert "train 0.0s" in capsys.readouterr().out  # zero-shot: nothing trained
    # the same class names: every output from the cache; others: another head, other entries
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "(5 cached, 0 extracted)" in capsys.readouterr().out
    assert main([*args[:4], "digits:0-3", *args[5:], "--out", str(tmp_path / "c")]) == 0
    assert "(0 cached, " in capsys.readouterr().out
    # a scorer that needs stages does not apply, and naming it says why
    assert main([*args[:8], "multi_mahalanobis", *args[11:], "--out", str(tmp_path / "d")]) == 2
    assert "does not name its stages" in capsys.readouterr().err


def test_gl_mcm_adds_the_best_patch_s_mcm() -> None:
    from oodlens.scorers import ModelInputs

    model, _ = create_backbone(TINY, class_names=NAMES)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        logits, features = forward_all(model, x)
        # by hand from open_clip: the patch tokens after ln_post, through the projection
        visual = model.clip.visual
        visual.output_tokens = True
        _, tokens = visual(x)
        visual.output_tokens = False
        patches = torch.nn.functional.normalize(tokens @ visual.proj, dim=-1).double()
    weight = model.get_classifier().weight.detach()
    text = torch.nn.functional.normalize(weight.double(), dim=-1)
    outputs = oodlens.Outputs(
        logits=logits.numpy(),
        features=features.numpy(),
        head_weight=weight.numpy(),
        head_bias=np.zeros(3),
    )
    inputs = ModelInputs(model, lambda: [(x, torch.zeros(6))], torch.device("cpu"), (1.0,), 6)
    glmcm = oodlens.create_scorer("gl_mcm").fit(outputs, model=inputs).score(outputs, inputs)
    mcm = oodlens.create_scorer("mcm").fit(outputs).score(outputs)
    local = (patches @ text.T).softmax(-1).amax(dim=(1, 2)).numpy()
    assert patches.shape[1] == 16  # a 4 x 4 grid of 8-px patches
    np.testing.assert_allclose(glmcm, mcm + local, rtol=1e-6)
    resnet = oodlens.backbones.meta_network("resnet18")
    assert "not a CLIP" in oodlens.create_scorer("gl_mcm").applies_to(resnet)
