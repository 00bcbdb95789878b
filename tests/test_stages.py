"""Several stages in one pass: pooled features and Gram statistics of earlier stages,
recorded by extraction as named blocks beside the penultimate features, cached, and read by
the scorers that declare them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import oodlens
from oodlens import Outputs
from oodlens.backbones import backbone_stages, build_transform, with_stages
from oodlens.cache import Cache
from oodlens.cli import main
from oodlens.errors import MissingOutputsError
from oodlens.extract import cached_extract, extract_outputs
from oodlens.network import forward_with_blocks, gram_statistics
from oodlens.options import GRAM_POWERS, ExtractOptions


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    transform, _ = build_transform(model, 32)
    source = oodlens.load_dataset("digits:0-2@test")
    return model, transform, source.subset(list(range(24)), "digits:0-2@test[:24]")


def _stage_maps(model, x):
    """The outputs of the stem and the four residual stages, by calling the modules."""
    with torch.no_grad():
        stem = model.act1(model.bn1(model.conv1(x)))
        maps = [stem]
        h = model.maxpool(stem)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            h = layer(h)
            maps.append(h)
    return maps


def test_stage_options_are_row_fields_left_out_of_old_keys() -> None:
    before = {
        "img_size": None,
        "precision": "fp32",
        "channels_last": False,
        "preprocess": "auto",
        "features_dtype": "float32",
        "skip_corrupt": False,
    }
    assert ExtractOptions().key_fields() == before  # every earlier cache entry stays valid
    options = ExtractOptions(stages=[3, 1, 3], gram_stages=2)
    assert options.stages == (1, 3) and options.gram_stages == (2,)
    assert options.key_fields() == {**before, "stages": (1, 3), "gram_stages": (2,)}
    with pytest.raises(oodlens.errors.InvalidParameterError, match="stages"):
        ExtractOptions(stages=[-1])


def test_extraction_records_each_stage_as_the_modules_give_it(resnet, tmp_path) -> None:
    model, transform, source = resnet
    out = extract_outputs(
        model, source, transform, (3, 32, 32), stages=(0, 2), gram_stages=(3,), progress=False
    )
    assert sorted(out.blocks) == ["gram3", "stage0", "stage2"]
    x = torch.stack([transform(source.loader(i)) for i in range(len(source))])
    maps = _stage_maps(model, x)
    np.testing.assert_allclose(out.block("stage0"), maps[0].mean((2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.block("stage2"), maps[2].mean((2, 3)).numpy(), atol=1e-5)
    # the Gram statistic from the full C x C matrices, as the paper writes it
    f = maps[3].double().flatten(2)
    expected = []
    for p in GRAM_POWERS:
        g = ((f**p) @ (f**p).transpose(1, 2)).sum(2)
        expected.append(g.sign() * g.abs() ** (1.0 / p))
    expected = torch.cat(expected, 1).numpy()
    assert out.block("gram3").shape == (24, 10 * 256)
    np.testing.assert_allclose(out.block("gram3"), expected, rtol=1e-5, atol=1e-6)
    # the penultimate features and the logits are those of the plain pass
    plain = extract_outputs(model, source, transform, (3, 32, 32), progress=False)
    assert plain.blocks is None
    np.testing.assert_allclose(out.logits, plain.logits, atol=1e-5)
    np.testing.assert_allclose(out.features, plain.features, atol=1e-5)
    # written batch by batch into a folder: the same blocks
    folder = tmp_path / "entry"
    folder.mkdir()
    written = extract_outputs(
        model,
        source,
        transform,
        (3, 32, 32),
        stages=(0, 2),
        gram_stages=(3,),
        progress=False,
        batch_size=10,
        out_dir=folder,
    )
    for name in out.blocks:
        np.testing.assert_array_equal(written.block(name), out.block(name))
    assert json.loads((folder / "meta.json").read_text())["blocks"]["stage2"] == [128]


def test_gram_statistics_of_a_vit_grid_and_a_hand_case() -> None:
    maps = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # one image, C=2, H=1, W=2
    got = gram_statistics(maps, (1, 2))
    # p=1: G = F F^T = [[5, 2], [2, 9.25]] -> row sums 7, 11.25
    # p=2: F^2 = [[1, 4], [9, 0.25]], G = [[17, 10], [10, 81.0625]] -> sqrt(27), sqrt(91.0625)
    np.testing.assert_allclose(got.numpy(), [[7.0, 11.25, 27**0.5, 91.0625**0.5]])
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32)
    logits, feats, blocks = forward_with_blocks(vit.eval(), torch.rand(2, 3, 32, 32), (0, 11))
    assert blocks["stage11"].shape == (2, 192) and logits.shape == (2, 2)
    assert backbone_stages("vit_tiny_patch16_224") == [f"blocks.{i}" for i in range(12)]


def test_with_stages_resolves_the_scorers_stages_for_the_backbone() -> None:
    options = ExtractOptions(stages=(1,))
    got = with_stages(options, "resnet18", [{"logits", "stage3"}, {"grams", "val"}])
    assert got.stages == (1, 3) and got.gram_stages == (0, 1, 2, 3, 4)
    assert with_stages(ExtractOptions(), "resnet18", [{"logits"}]) == ExtractOptions()
    assert with_stages(options, "resnet18", [{"stages"}]).stages == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"no stage 5.*0: act1, 1: layer1"):
        with_stages(options, "resnet18", [{"stage5"}])
    assert backbone_stages("convnext_atto") == [f"stages.{i}" for i in range(4)]


def test_blocks_are_cached_checked_and_keyed(resnet, tmp_path) -> None:
    model, transform, source = resnet
    cache = Cache(tmp_path / "cache")

    def run(**fields):
        return cached_extract(
            lambda: model,
            "resnet18",
            "w",
            source,
            transform,
            (3, 32, 32),
            cache,
            progress=False,
            **fields,
        )

    plain, hit, _ = run()
    staged, hit_staged, _ = run(stages=(1,), gram_stages=(4,))
    assert not hit and not hit_staged and plain.blocks is None  # another key
    again, hit_again, _ = run(stages=[1], gram_stages=4)
    assert hit_again and sorted(again.blocks) == ["gram4", "stage1"]
    np.testing.assert_array_equal(again.block("stage1"), staged.block("stage1"))
    entries = sorted((tmp_path / "cache" / "outputs").iterdir())
    entry = next(e for e in entries if (e / "block_gram4.bin").exists())
    (entry / "verified.json").unlink()
    data = bytearray((entry / "block_gram4.bin").read_bytes())
    data[5] ^= 0xFF  # one altered byte of a block: the entry is damaged
    (entry / "block_gram4.bin").write_bytes(bytes(data))
    assert [p for p, _ in cache.verify()] == [entry]
    assert cache.get_outputs(entry.name) is None and not entry.exists()  # removed, re-extracted


def test_outputs_blocks_are_validated_and_travel_with_rows(tmp_path) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="not a valid block name"):
        Outputs(logits=logits, blocks={"Stage 1": np.zeros((4, 2))})
    with pytest.raises(ValueError, match=r"blocks\['stage1'\] has 3 rows"):
        Outputs(logits=logits, blocks={"stage1": np.zeros((3, 2))})
    bad = np.zeros((4, 2))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"blocks\['gram1'\].*NaN"):
        Outputs(logits=logits, blocks={"gram1": bad})
    out = Outputs(logits=logits, blocks={"stage1": rng.normal(size=(4, 2))})
    np.testing.assert_array_equal(out.subset([3, 0]).block("stage1"), out.block("stage1")[[3, 0]])
    loaded = Outputs.load(out.save(tmp_path / "o.npz"))
    np.testing.assert_array_equal(loaded.block("stage1"), out.block("stage1"))
    scorer = oodlens.create_scorer("multi_mahalanobis", stages=[2])
    with pytest.raises(MissingOutputsError, match=r"'stage2'.*--stages"):
        scorer.fit(Outputs(logits=logits, labels=[0, 1, 2, 0], blocks=out.blocks))


@pytest.mark.slow
def test_bench_extracts_the_stages_its_scorers_declare(tmp_path, capsys) -> None:
    args = [
        "bench",
        "--id",
        "digits:0-2",
        "--ood",
        "far=noise:gaussian,n=40",
        "--epochs",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    scorers = ["multi_mahalanobis", "gram:stages=[3,4],powers=[1,2]", "msp"]
    dets = tmp_path / "detectors"
    run = [*args, "--scorers", *scorers, "--out", str(tmp_path / "a")]
    assert main([*run, "--save-detectors", str(dets)]) == 0
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    rows = {r["scorer"]: r for r in result["summary"]}
    assert set(rows) == set(scorers)
    # a saved detector extracts the stages its scorer reads
    source = oodlens.load_dataset("digits:0-2@test")
    images = [source.loader(i) for i in range(4)]
    for path in sorted(dets.glob("*.oodlens")):
        verdicts = oodlens.Detector.load(path).predict(images)
        assert len(verdicts.ids) == 4 and np.isfinite(verdicts.scores).all(), path.name
    capsys.readouterr()
    # msp alone reads no stage: its outputs are another (the old) cache entry
    assert main([*args, "--scorers", "msp", "--out", str(tmp_path / "b")]) == 0
    assert "(0 cached, " in capsys.readouterr().out
    # --stages beside a scorer's own: one more entry, holding both
    assert main([*args, "--scorers", "msp", "--stages", "2", "--out", str(tmp_path / "c")]) == 0
    assert "(0 cached, " in capsys.readouterr().out
    assert main([*args, "--scorers", "msp", "--stages", "9", "--out", str(tmp_path / "d")]) == 2
    assert "no stage 9" in capsys.readouterr().err
