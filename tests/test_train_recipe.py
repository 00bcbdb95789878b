"""oodlens train --recipe openood_cifar: OpenOOD's settings, schedule and batch augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oodlens.backbones import read_model_config
from oodlens.cli import main
from oodlens.errors import InvalidParameterError
from oodlens.train import RECIPES, TrainConfig, augment_batch, cosine_annealing


def test_openood_cifar_recipe_has_openood_settings() -> None:
    # configs/pipelines/train/baseline.yml, configs/datasets/cifar10/cifar10.yml and
    # openood/trainers/base_trainer.py of Jingkang50/OpenOOD, as read by hand
    cfg = TrainConfig.from_recipe("openood_cifar", data="digits:0-1")
    assert (cfg.model, cfg.img_size, cfg.epochs, cfg.batch_size) == (
        "openood_resnet18_32x32",
        32,
        100,
        128,
    )
    assert (cfg.lr, cfg.weight_decay, cfg.hflip, cfg.recipe) == (0.1, 5e-4, True, "openood_cifar")
    r = RECIPES["openood_cifar"]
    assert (r.momentum, r.nesterov, r.lr_min, r.pad) == (0.9, True, 1e-6, 4)
    assert TrainConfig.from_recipe("openood_cifar", epochs=1).epochs == 1
    with pytest.raises(InvalidParameterError, match="Unknown recipe 'openood'"):
        TrainConfig.from_recipe("openood")
    with pytest.raises(InvalidParameterError, match="recipe"):
        TrainConfig(recipe="sgd")


def test_cosine_annealing_is_openood_schedule() -> None:
    assert cosine_annealing(0, 100, 1.0, 1e-5) == pytest.approx(1.0)
    assert cosine_annealing(100, 100, 1.0, 1e-5) == pytest.approx(1e-5)
    assert cosine_annealing(50, 100, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_annealing(25, 100, 1.0, 0.0) == pytest.approx((1 + math.sqrt(0.5)) / 2)


def test_augment_batch_flips_and_crops_each_image() -> None:
    images = torch.arange(6 * 3 * 5 * 7, dtype=torch.float32).reshape(6, 3, 5, 7) + 1
    out, flips, offsets = augment_batch(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for k in range(6):
        x = images[k].numpy()[:, :, ::-1] if flips[k] else images[k].numpy()
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))  # zeros, as RandomCrop(padding=2)
        top, left = offsets[k].tolist()
        np.testing.assert_array_equal(out[k].numpy(), padded[:, top : top + 5, left : left + 7])
    assert offsets.min() >= 0 and offsets.max() <= 4
    # a seed gives the same draws wherever the images are
    again = augment_batch(images, 2, torch.Generator().manual_seed(0))[0]
    assert torch.equal(out, again)
    # over many images every offset and both flips occur
    _, flips, offsets = augment_batch(
        torch.zeros(400, 1, 4, 4), 2, torch.Generator().manual_seed(1)
    )
    assert 0.4 < flips.float().mean() < 0.6
    assert set(offsets[:, 0].tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_train_recipe_one_cpu_epoch(tmp_path, monkeypatch, capsys) -> None:
    made = {}
    real_sgd = torch.optim.SGD

    def sgd(params, **kwargs):
        made.update(kwargs)
        opt = real_sgd(params, **kwargs)
        made["opt"] = opt
        return opt

    monkeypatch.setattr(torch.optim, "SGD", sgd)
    out = tmp_path / "r18.safetensors"
    code = main(
        [
            "train",
            "--recipe",
            "openood_cifar",
            "--data",
            "digits:0-1",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert {k: made[k] for k in ("lr", "momentum", "weight_decay", "nesterov")} == {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": True,
    }
    # one epoch of ceil(288 / 128) = 3 steps, the schedule ended at 1e-6
    assert made["opt"].param_groups[0]["lr"] == pytest.approx(1e-6)
    stored = read_model_config(out)
    assert stored.model == "openood_resnet18_32x32" and stored.img_size == 32
    train = stored.extra["train"]
    assert train["recipe"] == "openood_cifar" and train["epochs"] == 1
    assert train["batch_size"] == 128 and train["optimizer"]["nesterov"] is True
    assert stored.extra["summary"]["steps"] == 3
    # OpenOOD's CIFAR-10 normalisation, which the network's timm config carries
    assert stored.extra["normalization"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert "test accuracy" in capsys.readouterr().out
