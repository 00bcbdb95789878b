"""OpenOOD's CIFAR ResNet-18 loads OpenOOD-format checkpoints (a state dict under OpenOOD's
key names, built here locally; no download) and computes what OpenOOD's network computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from oodlens.backbones import build_transform, create_backbone, forward_all  # noqa: E402


class Block(nn.Module):
    """A CIFAR basic block as described by OpenOOD (``shortcut`` = 1x1 conv + BN on change)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class OpenOODStyleResNet18(nn.Module):
    """3x3 stride-1 stem, no max-pool, stages of 64/128/256/512, average pool, fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, stages = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def test_openood_checkpoint_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    ref = OpenOODStyleResNet18(num_classes=10)
    for m in ref.modules():  # non-trivial BN statistics, as in a trained network
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ref.eval()
    state = ref.state_dict()
    assert any(".shortcut." in k for k in state)  # OpenOOD's key names
    path = tmp_path / "best.ckpt"
    torch.save(state, path)
    model, cfg = create_backbone("openood_resnet18_32x32", checkpoint=path)
    assert cfg.num_classes == 10
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits, feats = forward_all(model, x)
        torch.testing.assert_close(logits, ref(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(feats, ref.features(x), rtol=1e-4, atol=1e-5)
    _, data_cfg = build_transform("openood_resnet18_32x32")
    assert data_cfg["input_size"] == (3, 32, 32)
    assert data_cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
    with pytest.raises(ValueError, match="no weights on timm's hub"):
        create_backbone("openood_resnet18_32x32", num_classes=10, pretrained=True)
