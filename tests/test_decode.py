"""--decode device: JPEG bytes decoded in batches by torchvision, and the clean fallback to
the CPU decoder without CUDA."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import oodlens
from oodlens.backbones import BatchPreprocess, build_transform, create_backbone, resolve_decode
from oodlens.cli import main
from oodlens.datasets import CorruptImageError
from oodlens.extract import decode_jpeg_batch, extract_outputs
from oodlens.options import ExtractOptions


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Two classes of JPEGs of several sizes, plus a greyscale JPEG, a PNG and a JPEG with
    an EXIF rotation (the last three are decoded on the CPU)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("a", "b")):
        (root / cls).mkdir()
        for i in range(30):
            h, w = (40 + 8 * (i % 3), 56 - 4 * (i % 2))
            x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            x[..., k] //= 2  # a little class signal
            Image.fromarray(x).save(root / cls / f"{i}.jpg", quality=85)
    grey = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(root / "a" / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(root / "b" / "x.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: PIL turns it (as_shown), torchvision would not
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(
        root / "b" / "rotated.jpg", exif=exif
    )
    return root


def test_decode_is_a_row_field_left_out_of_old_keys() -> None:
    assert "decode" not in ExtractOptions().key_fields()  # earlier cache entries stay valid
    assert ExtractOptions(decode="device").key_fields()["decode"] == "device"
    with pytest.raises(oodlens.errors.InvalidParameterError, match="decode='gpu'"):
        ExtractOptions(decode="gpu")


def test_resolve_decode_falls_back_without_cuda() -> None:
    assert resolve_decode("cpu", "cpu", "pil") == "cpu"
    with pytest.warns(UserWarning, match="decoded on the CPU"):
        assert resolve_decode("device", "cpu", "pil") == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_decode("device", "cuda", "device") == "device"
    with pytest.raises(ValueError, match="--preprocess device"):
        resolve_decode("device", "cuda", "pil")
    with pytest.raises(ValueError, match="decode='x'"):
        resolve_decode("x", "cpu", "pil")


def test_device_decoding_path_gives_the_cpu_rows(jpeg_folder) -> None:
    # the bytes path run on the CPU (torchvision's libjpeg-turbo) against PIL's decoding:
    # the same pixels, hence the same rows; the grey JPEG, the PNG and the rotated JPEG
    # take the CPU path inside the same run
    source = oodlens.load_dataset(str(jpeg_folder))
    assert source.files and len(source) == 63
    model, _ = create_backbone("resnet18", num_classes=2)
    tf, cfg = build_transform(model, 32)
    bp = BatchPreprocess(tf)
    shape = tuple(cfg["input_size"])
    common = {"preprocess": "device", "batch_size": 8, "num_workers": 0}
    cpu = extract_outputs(model, source, bp, shape, ExtractOptions(**common), progress=False)
    dev = extract_outputs(
        model, source, bp, shape, ExtractOptions(decode="device", **common), progress=False
    )
    np.testing.assert_allclose(dev.logits, cpu.logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dev.features, cpu.features, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="device preprocessing"):
        extract_outputs(
            model, source, tf, shape, ExtractOptions(decode="device", **common), progress=False
        )


def test_decode_jpeg_batch_decodes_bytes_and_names_a_bad_file(jpeg_folder) -> None:
    path = jpeg_folder / "a" / "0.jpg"
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    done = torch.zeros(3, 4, 4, dtype=torch.uint8)
    out = decode_jpeg_batch([data, done], [str(path), ""], "cpu")
    with Image.open(path) as img:
        want = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(out[0].numpy(), want)
    assert out[1] is done
    broken = torch.frombuffer(bytearray(path.read_bytes()[:40]), dtype=torch.uint8)
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        decode_jpeg_batch([data, broken], [str(path), "broken.jpg"], "cpu")
    # a JPEG torchvision refuses but PIL reads is decoded by PIL
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    ok = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    assert decode_jpeg_batch([ok], ["x.jpg"], "cpu")[0].shape == (3, 8, 8)


@pytest.mark.slow
def test_bench_decode_device_falls_back_on_cpu(jpeg_folder, tmp_path, capsys) -> None:
    args = [
        "bench",
        "--id",
        str(jpeg_folder),
        "--ood",
        "far=noise:gaussian,n=20",
        "--scorers",
        "msp",
        "--epochs",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "cpu")]) == 0
    assert "(0 cached, " in capsys.readouterr().out
    assert main([*args, "--decode", "device", "--out", str(tmp_path / "dev")]) == 0
    captured = capsys.readouterr()
    assert "decoded on the CPU" in captured.err
    # the fallback's rows are the CPU decoder's: every output comes from the first run's cache
    assert " cached, 0 extracted)" in captured.out
