"""The scorers on earlier stages (multi_mahalanobis, gram): parity with pytorch-ood 0.4.0's
MultiMahalanobis and Gram on feature maps of our own, and the hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import oodlens
from oodlens.network import gram_statistics
from oodlens.options import GRAM_POWERS

pytorch_ood = pytest.importorskip("pytorch_ood", reason="pytorch-ood (dev extra) not installed")


def _maps(n: int, seed: int, ood: bool = False):
    """Two stages of (N, C, H, W) maps with a class signal in the first channels, their labels,
    and a network on them: layer 0 the identity, layer 1 a fixed 1x1 convolution with a
    ReLU, the head a pooled linear map reading the class channels (so that the predicted
    class is the label on ID rows)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6, 4, 4)) * (2.0 if ood else 1.0)
    if not ood:
        x[np.arange(n), y] += 4.0
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(5, 6)[:, :, None, None] + 0.1 * torch.randn(5, 6, 1, 1))
        conv.bias.zero_()
    layers = [torch.nn.Identity(), torch.nn.Sequential(conv, torch.nn.ReLU())]
    head = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3)
    )
    with torch.no_grad():
        head[2].weight.copy_(torch.eye(3, 5))
        head[2].bias.zero_()
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        m0 = layers[0](xt)
        m1 = layers[1](m0)
        logits = head(m1)
    return xt, torch.tensor(y), [m0, m1], logits, layers, head


def _outputs(maps, logits, y=None) -> oodlens.Outputs:
    blocks = {}
    for i, m in enumerate(maps):
        blocks[f"stage{i}"] = m.mean((2, 3)).numpy()
        blocks[f"gram{i}"] = gram_statistics(m, GRAM_POWERS).numpy()
    return oodlens.Outputs(
        logits=logits.numpy(), labels=None if y is None else y.numpy(), blocks=blocks
    )


def test_multi_mahalanobis_parity_with_pytorch_ood() -> None:
    _, y, train_maps, train_logits, _, _ = _maps(300, 0)
    test = [_maps(80, 1), _maps(80, 2, ood=True)]
    test_maps = [torch.cat([t[2][k] for t in test]) for k in range(2)]
    test_logits = torch.cat([t[3] for t in test])
    reference = pytorch_ood.detector.MultiMahalanobis([torch.nn.Identity()] * 2)
    reference.fit_structured([m.mean((2, 3)) for m in train_maps], y)
    theirs = -reference.predict_structured(test_maps).numpy()
    scorer = oodlens.create_scorer("multi_mahalanobis").fit(_outputs(train_maps, train_logits, y))
    ours = scorer.score(_outputs(test_maps, test_logits))
    assert scorer.stages_ == ("stage0", "stage1")
    assert spearmanr(ours, theirs).statistic >= 0.999
    # averaged: the mean of the one-stage scores
    one = [
        oodlens.create_scorer("multi_mahalanobis", stages=[k])
        .fit(_outputs(train_maps, train_logits, y))
        .score(_outputs(test_maps, test_logits))
        for k in range(2)
    ]
    np.testing.assert_allclose(ours, (one[0] + one[1]) / 2, rtol=1e-10)
    single = oodlens.create_scorer("mahalanobis").fit(
        oodlens.Outputs(
            logits=train_logits.numpy(),
            labels=y.numpy(),
            features=train_maps[1].mean((2, 3)).numpy(),
        )
    )
    expected = single.score(
        oodlens.Outputs(logits=test_logits.numpy(), features=test_maps[1].mean((2, 3)).numpy())
    )
    np.testing.assert_allclose(one[1], expected, rtol=1e-10)


def test_gram_parity_with_pytorch_ood() -> None:
    x, y, _, _, layers, head = _maps(400, 0)
    reference = pytorch_ood.detector.Gram(
        head, layers, num_classes=3, num_poles_list=list(GRAM_POWERS)
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)
    torch.manual_seed(7)
    reference.fit(loader)
    # the rows it held out to normalise: per class, the first 10% of a permutation drawn
    # after the same seed (and the loader's iterator, which draws its base seed first), in
    # the order the class's rows come
    torch.manual_seed(7)
    iter(loader)
    held = np.zeros(len(y), bool)
    for c in range(3):
        rows = np.flatnonzero(y.numpy() == c)
        perm = torch.randperm(len(rows)).numpy()
        held[rows[perm[: int(0.1 * len(rows))]]] = True
    with torch.no_grad():
        maps = [layers[0](x)]
        maps.append(layers[1](maps[0]))
        logits = head(maps[1])
    assert (logits.argmax(1) == y).all()  # bounds by label (theirs) = by prediction (ours)
    everything = _outputs(maps, logits, y)
    scorer = oodlens.create_scorer("gram").fit(
        everything.subset(~held), val=everything.subset(held)
    )
    test = [_maps(80, 1), _maps(80, 2, ood=True)]
    xt = torch.cat([t[0] for t in test])
    with torch.no_grad():
        tm = [layers[0](xt)]
        tm.append(layers[1](tm[0]))
        tl = head(tm[1])
    theirs = -reference.predict_structured(tl, tm).numpy()
    ours = scorer.score(_outputs(tm, tl))
    assert spearmanr(ours, theirs).statistic >= 0.999
    np.testing.assert_allclose(scorer.expected_, reference.layer_norm.numpy(), rtol=1e-4)


def test_gram_by_hand() -> None:
    # one stage, one channel, orders 1-10 recorded: the scorer reads order 1 only
    def outputs(values, preds):
        logits = np.eye(2)[preds] * 3.0
        g = np.repeat(np.asarray(values, float)[:, None], len(GRAM_POWERS), axis=1)
        return oodlens.Outputs(logits=logits, blocks={"gram0": g})

    train = outputs([1.0, 2.0, 4.0, 10.0, 20.0], [0, 0, 0, 1, 1])
    val = outputs([0.5, 25.0], [0, 1])  # deviations (1 - 0.5)/1 = 0.5 and (25 - 20)/20 = 0.25
    scorer = oodlens.create_scorer("gram", powers=[1]).fit(train, val=val)
    np.testing.assert_allclose(scorer.mins_[0][:, 0], [1.0, 10.0])
    np.testing.assert_allclose(scorer.maxs_[0][:, 0], [4.0, 20.0])
    np.testing.assert_allclose(scorer.expected_, [0.375], rtol=1e-5)
    got = scorer.score(outputs([3.0, 8.0, 5.0], [0, 0, 1]))
    # inside class 0's bounds; 4 above class 0's max of 4 (relative 1); 5 below class 1's 10
    expected = -np.array([0.0, (8 - 4) / (4 + 1e-6), (10 - 5) / (10 + 1e-6)]) / 0.375
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_stage_scorers_refuse_bad_settings() -> None:
    with pytest.raises(oodlens.errors.InvalidParameterError, match="powers"):
        oodlens.create_scorer("gram", powers=[11])
    with pytest.raises(oodlens.errors.InvalidParameterError, match="stages"):
        oodlens.create_scorer("multi_mahalanobis", stages=[])
    rng = np.random.default_rng(0)
    train = oodlens.Outputs(
        logits=rng.normal(size=(20, 2)),
        labels=np.arange(20) % 2,
        blocks={"gram1": np.ones((20, 7))},
    )
    with pytest.raises(ValueError, match="not a multiple of the 10 recorded orders"):
        oodlens.create_scorer("gram").fit(train, val=train)
