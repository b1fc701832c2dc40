"""The built-in CIFAR-style model zoo: one registry, uniform builders.

Every builder takes ``in_channels`` and ``num_classes`` (and ignores what it
does not need of ``input_size``), so the same model fits Fashion-MNIST (1x28x28),
digits (1x8x8) or CIFAR (3x32x32). All models are torch.fx traceable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .model_names import BUILTIN_MODELS

ZOO: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    if name not in BUILTIN_MODELS:  # the torch-free list the daemon checks requests against
        raise ValueError(f"built-in model {name!r} must be listed in model_names.BUILTIN_MODELS")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ZOO[name] = fn
        return fn

    return wrap


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """ResNet basic unit; a projection shortcut (1x1 conv + BN) where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1, self.bn1 = conv_bn(in_channels, 16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            units = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                units.append(BasicBlock(cin, width, stride))
                cin = width
            layers.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, **_: object) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes)


@register("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10, **_: object) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes)


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG with BN for small images. Pools use ceil_mode so inputs as small as 8x8 still work."""

    def __init__(self, cfg: tuple, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [*conv_bn(cin, v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("vgg16")
def vgg16(in_channels: int = 3, num_classes: int = 10, **_: object) -> nn.Module:
    return CifarVGG(VGG16_CFG, in_channels, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 unit: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:  # fixed at construction, so fx traces one branch
            return x + self.conv(x)
        return self.conv(x)


# (expansion, channels, units, stride); strides of the first two stages are 1 for small inputs.
MOBILENETV2_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class CifarMobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 32), nn.ReLU6(inplace=True))
        units, cin = [], 32
        for t, c, n, s in MOBILENETV2_CFG:
            for i in range(n):
                units.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*units)
        self.head = nn.Sequential(*conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register("mobilenetv2")
def mobilenetv2(in_channels: int = 3, num_classes: int = 10, **_: object) -> nn.Module:
    return CifarMobileNetV2(in_channels, num_classes)
