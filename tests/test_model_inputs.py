"""The images model-aware scorers receive: preprocessed as extraction preprocesses them (in
batches on the device), in the order of the outputs' rows."""

from __future__ import annotations

import numpy as np
import torch

import oodlens
from oodlens.backbones import BatchPreprocess, build_transform
from oodlens.extract import extract_outputs, model_inputs
from oodlens.options import ExtractOptions


def test_model_inputs_match_the_per_image_transform_and_the_outputs() -> None:
    model, _ = oodlens.create_backbone("resnet18", num_classes=3)
    transform, cfg = build_transform(model, 32)
    source = oodlens.load_dataset("digits:0-2@test").subset(list(range(20)), "digits[:20]")
    options = ExtractOptions(batch_size=8)
    expected = torch.stack([transform(source.loader(i)) for i in range(len(source))])
    inputs = model_inputs(model, source, transform, (3, 32, 32), options, cfg["std"], 20)
    got = [(x, y) for x, y in inputs.batches()]
    assert [len(x) for x, _ in got] == [8, 8, 4]
    # normalised on the device in batches: the per-image transform's numbers
    torch.testing.assert_close(torch.cat([x for x, _ in got]), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(torch.cat([y for _, y in got]).numpy(), source.labels)
    # device preprocessing: the rows extraction gives with the same transform
    batched = BatchPreprocess(transform)
    inputs = model_inputs(model, source, batched, (3, 32, 32), options, cfg["std"], 20)
    with torch.no_grad():
        logits = torch.cat([model.eval()(x) for x, _ in inputs.batches()])
    outputs = extract_outputs(model, source, batched, (3, 32, 32), options, progress=False)
    np.testing.assert_allclose(logits.numpy(), outputs.logits, rtol=1e-4, atol=1e-5)
