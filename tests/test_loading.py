"""Data loading and extraction precision (issue 13, first part): workers from the CPU count,
bf16 autocast extraction close to fp32 and kept apart in the cache, channels-last equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oodlens
from oodlens.backbones import build_transform, create_backbone
from oodlens.cache import Cache
from oodlens.extract import (
    ExtractionReport,
    cached_extract,
    default_num_workers,
    extract_outputs,
)


def test_default_num_workers(monkeypatch):
    for cores, expected in ((1, 0), (2, 0), (4, 3), (16, 8)):
        monkeypatch.setattr("os.cpu_count", lambda c=cores: c)
        assert default_num_workers() == expected


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model, _ = create_backbone("resnet18", num_classes=5)
    transform, cfg = build_transform(model, 32)
    source = oodlens.load_dataset("digits:0-4@test")
    return model, transform, tuple(cfg["input_size"]), source


def test_bf16_and_channels_last_extraction(net, tmp_path):
    model, transform, size, source = net
    fp32 = extract_outputs(model, source, transform, size, batch_size=64, progress=False)
    cl = extract_outputs(
        model, source, transform, size, batch_size=64, progress=False, channels_last=True
    )
    np.testing.assert_allclose(cl.logits, fp32.logits, rtol=1e-4, atol=1e-4)
    bf16 = extract_outputs(
        model, source, transform, size, batch_size=64, progress=False, precision="bf16"
    )
    assert bf16.logits.dtype == np.float32
    scale = np.abs(fp32.logits).max()
    assert np.abs(bf16.logits - fp32.logits).max() < 0.05 * scale  # bf16 keeps ~3 digits
    assert np.corrcoef(bf16.features.ravel(), fp32.features.ravel())[0, 1] > 0.999
    # the precision is part of the cache key: an fp32 entry never answers a bf16 request
    cache = Cache(tmp_path)
    args = (lambda: model, "resnet18", "w", source, transform, size, cache)
    _, hit, _ = cached_extract(*args, progress=False)
    assert not hit
    _, hit, _ = cached_extract(*args, progress=False, precision="bf16")
    assert not hit
    _, hit, _ = cached_extract(*args, progress=False, precision="bf16")
    assert hit
    with pytest.raises(ValueError, match="precision='fp8' is not valid"):
        extract_outputs(model, source, transform, size, progress=False, precision="fp8")


def test_config_and_results_record_the_options():
    cfg = oodlens.BenchmarkConfig(precision="bf16", channels_last=True, num_workers=0)
    assert cfg.to_dict()["precision"] == "bf16" and cfg.to_dict()["channels_last"] is True
    with pytest.raises(ValueError, match="precision='half' is not valid"):
        oodlens.BenchmarkConfig(precision="half")
    with pytest.raises(
        ValueError, match=r"num_workers=-1 is not valid; it must be an int in \[0, inf\)"
    ):
        oodlens.BenchmarkConfig(num_workers=-1)


def test_extraction_writes_straight_into_a_memory_mapped_cache_entry(net, tmp_path):
    model, transform, size, source = net
    memory = extract_outputs(model, source, transform, size, batch_size=64, progress=False)
    cache = Cache(tmp_path)
    args = (lambda: model, "resnet18", "w", source, transform, size, cache)
    out, hit, _ = cached_extract(*args, progress=False, batch_size=50)
    assert not hit and isinstance(out.features, np.memmap) and isinstance(out.logits, np.memmap)
    np.testing.assert_allclose(out.logits, memory.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.features, memory.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.labels, memory.labels)
    half, _, _ = cached_extract(*args, progress=False, features_dtype="float16")
    assert half.features.dtype == np.float16
    np.testing.assert_allclose(half.features, memory.features, rtol=2e-3, atol=2e-3)
    # every scorer reads memory-mapped outputs in blocks, as in memory
    for name in ("msp", "logit_kde"):
        a = oodlens.create_scorer(name).fit(out).score(out)
        b = oodlens.create_scorer(name).fit(memory).score(memory)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_an_interrupted_extraction_leaves_no_cache_entry(net, tmp_path):
    from PIL import Image

    model, transform, size, _ = net
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), i * 30, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    source = oodlens.load_dataset(str(folder))
    cache = Cache(tmp_path / "cache")
    with pytest.raises(oodlens.datasets.CorruptImageError):
        cached_extract(
            lambda: model, "resnet18", "w", source, transform, size, cache, progress=False
        )
    assert not any((tmp_path / "cache" / "outputs").iterdir())  # no entry, no temp folder


def _grey_levels(a: torch.Tensor, b: torch.Tensor, std) -> torch.Tensor:
    """|a - b| of normalised images, back on the 0-255 scale of the pixels."""
    return (a - b).abs() * torch.tensor(std).view(-1, 1, 1) * 255


def test_device_preprocessing_matches_the_pil_path(net):
    """BatchPreprocess (decode on the workers, resize/crop/normalise in batches) against
    timm's PIL transform: at most 2 grey levels apart, rarely (float vs PIL's fixed point),
    for upscaled 8x8 digits, non-square and downscaled images."""
    from PIL import Image

    from oodlens.backbones import BatchPreprocess

    model, transform, size, source = net
    rng = np.random.default_rng(0)
    smooth = [
        np.clip(
            128
            + 60 * np.sin(np.add.outer(np.arange(h) / 7.0, np.arange(w) / 11.0))[..., None]
            + rng.normal(0, 8, (h, w, 3)),
            0,
            255,
        ).astype(np.uint8)
        for h, w in ((97, 130), (128, 96), (300, 200), (32, 32))
    ]
    for name, img_size in (("resnet18", 32), ("resnet50", None)):
        pil, cfg = build_transform(name, img_size)
        dev = BatchPreprocess(pil)
        images = [source.loader(i) for i in range(40)] + [Image.fromarray(a) for a in smooth]
        # one batch of mixed sizes on the "device" equals per-image calls
        batch = dev.batch([dev.decode(im) for im in images], "cpu")
        single = torch.stack([dev(im) for im in images])
        torch.testing.assert_close(batch, single)
        diff = _grey_levels(torch.stack([pil(im) for im in images]), batch, cfg["std"])
        assert batch.shape == (len(images), *cfg["input_size"])
        assert diff.max() <= 2.01 and diff.mean() < 0.02, (name, float(diff.mean()))
    # the same model on both paths: the same predictions, logits within 1% of their range
    a = extract_outputs(model, source, transform, size, batch_size=64, progress=False)
    b = extract_outputs(
        model, source, BatchPreprocess(transform), size, batch_size=64, progress=False
    )
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.logits.argmax(1) == b.logits.argmax(1)).mean() >= 0.99
    assert np.abs(a.logits - b.logits).max() < 0.01 * np.ptp(a.logits)


def test_pil_path_normalises_in_batches_bit_for_bit(net, tmp_path):
    """The PIL path runs ToTensor + Normalize on whole batches (BatchNormalize): the same
    tensors as timm's per-image transform, bit for bit, and the same outputs and cache
    entry as the transform applied image by image."""
    from PIL import Image
    from torchvision import transforms as T

    from oodlens.backbones import BatchNormalize

    model, transform, size, source = net
    rng = np.random.default_rng(1)
    images = [source.loader(i) for i in range(30)] + [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((97, 130), (40, 23), (32, 32))
    ]
    for name, img_size in (("resnet18", 32), ("resnet50", None), ("vit_tiny_patch16_224", 48)):
        pil, cfg = build_transform(name, img_size)
        batched = BatchNormalize.of(pil)
        assert batched is not None, pil
        expected = torch.stack([pil(im) for im in images])
        got = batched.batch([batched.decode(im) for im in images], "cpu")
        assert got.dtype == torch.float32 and got.shape == (len(images), *cfg["input_size"])
        assert torch.equal(got, expected), name
        assert torch.equal(batched(images[0]), expected[0])
    # only Composes of PIL steps then ToTensor and Normalize are batched; others run per image
    assert BatchNormalize.of(T.Compose([T.Grayscale(3), *transform.transforms])) is None
    assert BatchNormalize.of(T.Compose(transform.transforms[:-1])) is None
    assert BatchNormalize.of(lambda im: transform(im)) is None
    with pytest.raises(TypeError, match="must return RGB"):
        BatchNormalize.of(transform).decode(Image.fromarray(np.zeros((8, 8), np.float32)))
    # extraction: batched (the transform) against image by image (a plain callable)
    per_image = extract_outputs(
        model, source, lambda im: transform(im), size, batch_size=64, progress=False
    )
    batched_out = extract_outputs(model, source, transform, size, batch_size=64, progress=False)
    np.testing.assert_array_equal(batched_out.logits, per_image.logits)
    np.testing.assert_array_equal(batched_out.features, per_image.features)


def test_device_preprocessing_refuses_other_steps_and_keeps_its_own_cache_key(net, tmp_path):
    from torchvision import transforms as T

    from oodlens.backbones import BatchPreprocess, resolve_preprocess

    model, transform, size, source = net
    with pytest.raises(ValueError, match="Use --preprocess pil"):
        BatchPreprocess(T.Compose([T.Grayscale(3), *transform.transforms]))
    assert resolve_preprocess("auto", "cpu") == "pil" and resolve_preprocess("device", "cpu")
    with pytest.raises(ValueError, match="preprocess='gpu' is not valid"):
        resolve_preprocess("gpu", "cpu")
    with pytest.raises(ValueError, match="preprocess='gpu' is not valid"):
        oodlens.BenchmarkConfig(preprocess="gpu")
    cache = Cache(tmp_path)
    for tf, expect_hit in ((transform, False), (BatchPreprocess(transform), False)):
        _, hit, _ = cached_extract(
            lambda: model, "resnet18", "w", source, tf, size, cache, progress=False
        )
        assert hit == expect_hit  # a PIL entry never answers a device-preprocessing request


def test_device_preprocessing_skips_corrupt_images_by_name(net, tmp_path):
    from PIL import Image

    from oodlens.backbones import BatchPreprocess

    model, transform, size, _ = net
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, shape in enumerate(((8, 8), (20, 12), (40, 40))):
        Image.fromarray(np.full((*shape, 3), i * 60, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    source = oodlens.load_dataset(str(folder))
    report = ExtractionReport()
    out = extract_outputs(
        model,
        source,
        BatchPreprocess(transform),
        size,
        batch_size=2,
        progress=False,
        skip_corrupt=True,
        report=report,
    )
    assert out.n_samples == 3 and [p.rsplit("/", 1)[-1] for p in report.corrupt] == ["broken.png"]
    with pytest.raises(oodlens.datasets.CorruptImageError, match="broken.png"):
        extract_outputs(model, source, BatchPreprocess(transform), size, progress=False)


def test_training_precision_and_channels_last(tmp_path):
    from oodlens.backbones import read_model_config
    from oodlens.train import TrainConfig, train_model

    cfg = TrainConfig(epochs=3, img_size=32, hflip=False, precision="bf16", channels_last=True)
    path, summary = train_model(cfg, tmp_path / "m.safetensors", progress=False)
    assert summary["test_accuracy"] > 0.8  # 5 classes: chance is 0.2
    stored = read_model_config(path).extra["train"]
    assert stored["precision"] == "bf16" and stored["channels_last"] is True
    with pytest.raises(ValueError, match="precision='fp8' is not valid"):
        train_model(TrainConfig(precision="fp8"), tmp_path / "x.safetensors", progress=False)


def test_training_and_extraction_workers_stop_when_done(net, tmp_path):
    """Persistent training workers are shut down when the epochs end (and extraction's when
    it ends), even when the function's frame outlives the call (held here by a profile hook, as a first
    ``import timm`` inside it does until a garbage collection)."""
    import multiprocessing
    import sys

    from oodlens.train import TrainConfig, train_model

    frames = []

    def hold(frame, event, arg):
        if event == "call" and frame.f_code is train_model.__code__:
            frames.append(frame)

    sys.setprofile(hold)
    try:
        train_model(
            TrainConfig(epochs=1, img_size=16, hflip=False),
            tmp_path / "m.safetensors",
            num_workers=2,
            progress=False,
        )
    finally:
        sys.setprofile(None)
    assert frames, "the hook saw no call of train_model"
    assert multiprocessing.active_children() == []
    # the same for extraction's workers (one pass, not persistent)
    from oodlens import extract

    model, transform, size, source = net
    frames.clear()
    code = extract._extract_parts.__code__

    def hold_extract(frame, event, arg):
        if event == "call" and frame.f_code is code:
            frames.append(frame)

    sys.setprofile(hold_extract)
    try:
        extract_outputs(model, source, transform, size, num_workers=2, progress=False)
    finally:
        sys.setprofile(None)
    assert frames, "the hook saw no call of _extract_parts"
    assert multiprocessing.active_children() == []


def test_content_hashes_in_threads_equal_the_serial_ones():
    from oodlens.datasets import content_hashes

    source = oodlens.load_dataset("digits:0-4@test")
    assert content_hashes(source, threads=2) == content_hashes(source)


def test_several_datasets_in_one_pass_equal_one_at_a_time(net, tmp_path):
    """cached_extract_all: one DataLoader over every missing dataset (batches straddle two
    datasets here), each written to the entry cached_extract would write; cached entries are
    read; a corrupt file names its dataset, and nothing is cached then."""
    from PIL import Image

    from oodlens.extract import cached_extract_all

    model, transform, size, _ = net
    sources = {
        "a": oodlens.load_dataset("digits:0-4@test"),
        "b": oodlens.load_dataset("digits:5-9@test"),
        "c": oodlens.load_dataset("digits:0-1@train"),
    }
    one = Cache(tmp_path / "one")
    alone = {
        k: cached_extract(lambda: model, "r", "w", s, transform, size, one, batch_size=50)[0]
        for k, s in sources.items()
    }
    many = Cache(tmp_path / "many")
    first = cached_extract_all(
        lambda: model, "r", "w", {"a": sources["a"]}, transform, size, many, batch_size=50
    )
    assert not first["a"][1]
    got = cached_extract_all(
        lambda: model, "r", "w", sources, transform, size, many, batch_size=50, progress=False
    )
    assert [hit for _, hit, _ in got.values()] == [True, False, False]
    for k, (out, _, corrupt) in got.items():
        assert corrupt == [] and isinstance(out.features, np.memmap)
        np.testing.assert_array_equal(out.labels, alone[k].labels)
        np.testing.assert_allclose(out.logits, alone[k].logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.features, alone[k].features, rtol=1e-5, atol=1e-5)
        # the same cache entry as one dataset at a time: found by cached_extract
        again, hit, _ = cached_extract(
            lambda: model, "r", "w", sources[k], transform, size, many, progress=False
        )
        assert hit and again.n_samples == out.n_samples

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    mixed = {"digits": sources["b"], "folder": oodlens.load_dataset(str(folder))}
    fresh = Cache(tmp_path / "fresh")
    with pytest.raises(oodlens.datasets.CorruptImageError, match=r"(?s)in '.*imgs'.*broken\.png"):
        cached_extract_all(lambda: model, "r", "w", mixed, transform, size, fresh, progress=False)
    assert not any((tmp_path / "fresh" / "outputs").iterdir())  # no entry, no temp folder
    got = cached_extract_all(
        lambda: model, "r", "w", mixed, transform, size, fresh, skip_corrupt=True, progress=False
    )
    assert got["digits"][2] == [] and [p.rsplit("/", 1)[-1] for p in got["folder"][2]] == [
        "broken.png"
    ]
    assert got["folder"][0].n_samples == 5
    # with the cache off: kept in memory, and the skipped files still reported
    off = cached_extract_all(
        lambda: model,
        "r",
        "w",
        mixed,
        transform,
        size,
        Cache(tmp_path / "off", enabled=False),
        skip_corrupt=True,
        progress=False,
    )
    assert not isinstance(off["folder"][0].features, np.memmap)
    assert [p.rsplit("/", 1)[-1] for p in off["folder"][2]] == ["broken.png"]
    np.testing.assert_allclose(off["digits"][0].logits, got["digits"][0].logits, atol=1e-5)
    assert not (tmp_path / "off").exists()


def test_batches_cut_into_one_chunk_per_worker():
    from oodlens.extract import _batch_chunks

    plan = _batch_chunks(70, 32, 4)  # chunks of 8: 4 per full batch, the last batch of 6 whole
    assert [[(c.start, c.stop) for c in b] for b in plan] == [
        [(0, 8), (8, 16), (16, 24), (24, 32)],
        [(32, 40), (40, 48), (48, 56), (56, 64)],
        [(64, 70)],
    ]
    assert _batch_chunks(10, 4, 0) == [[range(0, 4)], [range(4, 8)], [range(8, 10)]]
    for n, batch, workers in ((1000, 256, 14), (13, 5, 3), (0, 8, 2)):
        plan = _batch_chunks(n, batch, workers)
        assert [i for b in plan for c in b for i in c] == list(range(n))  # every row once
        assert all(sum(map(len, b)) == min(batch, n - k * batch) for k, b in enumerate(plan))


@pytest.mark.parametrize("device_preprocess", [False, True])
def test_workers_decoding_chunks_give_the_rows_of_one_process(net, tmp_path, device_preprocess):
    """With workers, each batch is decoded in chunks by all of them and put together on the
    device: the same outputs, in the same order, as without workers, with images of mixed
    sizes (a chunk then holds a list) and an unreadable one in the middle of a chunk."""
    from PIL import Image

    from oodlens.backbones import BatchPreprocess

    model, transform, size, _ = net
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(37):
        shape = (12, 12) if i % 3 else (20, 9)
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    (folder / "17b.png").write_bytes(b"not a png")
    source = oodlens.load_dataset(str(folder))
    tf = BatchPreprocess(transform) if device_preprocess else transform
    runs = []
    for workers in (0, 2):
        report = ExtractionReport()
        out = extract_outputs(
            model,
            source,
            tf,
            size,
            batch_size=16,
            num_workers=workers,
            progress=False,
            skip_corrupt=True,
            report=report,
        )
        assert [p.rsplit("/", 1)[-1] for p in report.corrupt] == ["17b.png"]
        runs.append(out)
    single, chunked = runs
    assert chunked.n_samples == 37
    np.testing.assert_array_equal(chunked.labels, single.labels)
    np.testing.assert_allclose(chunked.logits, single.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked.features, single.features, rtol=1e-5, atol=1e-5)
    # row 18 (after the unreadable file) is image 18, as extracted alone
    alone = extract_outputs(model, source.subset([19], "one"), tf, size, progress=False)
    np.testing.assert_allclose(chunked.logits[18], alone.logits[0], rtol=1e-5, atol=1e-5)
