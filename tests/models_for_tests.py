"""Models defined only in the tests: prunerd must find their blocks without knowing them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InlineResidualNet(nn.Module):
    """Residual units written inline in the parent's forward (no block module), with a
    custom residual module mixed in and functional activations."""

    class Branch(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a = nn.Conv2d(c, c, 3, padding=1)
            self.b = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x)))

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.branch1 = self.Branch(8)
        self.branch2 = self.Branch(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.branch3 = self.Branch(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.branch1(x))
        x = torch.add(x, self.branch2(x))
        x = F.relu(self.down(x))
        x = x + self.branch3(x)
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SEUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        short = x if self.proj is None else self.proj(x)
        return F.relu(out + short)


class SENet(nn.Module):
    """A small SE-ResNet: squeeze-and-excitation inside each residual branch."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.units = nn.Sequential(SEUnit(16, 16), SEUnit(16, 32, 2), SEUnit(32, 32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.units(self.stem(x)), 1), 1))


class Untraceable(nn.Module):
    """Data-dependent control flow inside a submodule: torch.fx cannot trace it."""

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x
            return -x

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.gate = self.Gate()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gate(self.conv(x)).mean((2, 3)))


def inline_residual_net(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return InlineResidualNet(in_channels, num_classes)


def senet(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return SENet(in_channels, num_classes)


def untraceable(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return Untraceable(in_channels, num_classes)
