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


# --- Standard families, laid out as torchvision lays them out (CI has no torchvision) ------


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: a Sequential subclass, conv then norm then act."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm: type[nn.Module] | None = nn.BatchNorm2d,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=norm is None)
        ]
        if norm is not None:
            layers.append(norm(cout))
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: pool, 1x1, act, 1x1, gate, ``scale * input``."""

    def __init__(
        self,
        c: int,
        squeeze: int,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class StochasticDepth(nn.Module):
    """Drops the residual branch per sample while training; the identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class MBConv(nn.Module):
    """EfficientNet's MBConv (torchvision layout): expand, depthwise, SE, project; a
    shortcut (after stochastic depth) only when stride is 1 and channels match."""

    def __init__(
        self,
        cin: int,
        cout: int,
        expand: int,
        stride: int = 1,
        se: bool = True,
        act: type[nn.Module] = nn.SiLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = cin * expand
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(Conv2dNormActivation(cin, hidden, 1, act=act))
        layers.append(Conv2dNormActivation(hidden, hidden, 3, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcitation(hidden, max(1, cin // 4), nn.SiLU, gate))
        layers.append(Conv2dNormActivation(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNetLike(nn.Module):
    """Stem, MBConv without shortcut (channels change), with shortcut, strided; head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(in_channels, 16, act=nn.SiLU),
            nn.Sequential(MBConv(16, 24, 1)),
            nn.Sequential(MBConv(24, 24, 4), MBConv(24, 32, 4, stride=2)),
            Conv2dNormActivation(32, 64, 1, act=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MobileNetV3Like(nn.Module):
    """MobileNetV3's inverted residuals: hard-sigmoid SE on some, ReLU or Hardswish, no
    expansion conv where the expanded width equals the input's."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        hs, relu = nn.Hardswish, nn.ReLU
        self.features = nn.Sequential(
            Conv2dNormActivation(in_channels, 16, act=hs),
            MBConv(16, 16, 1, se=True, act=relu, gate=nn.Hardsigmoid),
            MBConv(16, 24, 3, se=False, act=relu),
            MBConv(24, 24, 3, se=True, act=hs, gate=nn.Hardsigmoid),
            Conv2dNormActivation(24, 48, 1, act=hs),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(48, 32), nn.Hardswish(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Bottleneck(nn.Module):
    """ResNet's bottleneck (torchvision layout); ``groups`` > 1 and ``width`` make it ResNeXt
    or Wide-ResNet's."""

    def __init__(
        self, cin: int, planes: int, stride: int = 1, groups: int = 1, width: int = 0
    ) -> None:
        super().__init__()
        width = width or planes
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    """Stem with max pool, bottlenecks with and without downsample, a ResNeXt stage."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(16, 8), Bottleneck(32, 8))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, 2, groups=4, width=32), Bottleneck(64, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BottleneckTransform(nn.Sequential):
    """RegNet's transform: 1x1, grouped 3x3, SE, 1x1 (a Sequential subclass)."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__(
            Conv2dNormActivation(cin, cout, 1),
            Conv2dNormActivation(cout, cout, 3, stride, groups=cout // group_width),
            SqueezeExcitation(cout, max(1, cin // 4)),
            Conv2dNormActivation(cout, cout, 1, act=None),
        )


class ResBottleneckBlock(nn.Module):
    """RegNet's residual block: ``proj(x) + f(x)`` or ``x + f(x)``, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, group_width: int = 8) -> None:
        super().__init__()
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = Conv2dNormActivation(cin, cout, 1, stride, act=None)
        self.f = BottleneckTransform(cin, cout, stride, group_width)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.f(x) if self.proj is not None else x + self.f(x)
        return self.activation(x)


class RegNetLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = Conv2dNormActivation(in_channels, 16, 3, 2)
        self.trunk_output = nn.Sequential(
            nn.Sequential(ResBottleneckBlock(16, 24, 2), ResBottleneckBlock(24, 24)),
            nn.Sequential(ResBottleneckBlock(24, 48, 2), ResBottleneckBlock(48, 48)),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk_output(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map, as torchvision's ConvNeXt writes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, permute, LayerNorm, Linear, GELU, Linear, permute,
    layer scale, stochastic depth, add."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.stochastic_depth = StochasticDepth(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        result = self.stochastic_depth(result)
        result += x
        return result


class ConvNeXtLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(in_channels, 16, 2, 2, norm=LayerNorm2d, act=None),
            nn.Sequential(CNBlock(16), CNBlock(16)),
            nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 32, 2, 2)),
            nn.Sequential(CNBlock(32)),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(32), nn.Flatten(1), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


class _DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 on the concatenation of all earlier
    features, passed in as a list (torchvision layout)."""

    def __init__(self, cin: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def bn_function(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, input: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        prev = [input] if isinstance(input, torch.Tensor) else input
        return self.conv2(self.relu2(self.norm2(self.bn_function(prev))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(cin + i * growth, growth))

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNetLike(nn.Module):
    """Stem, dense block of 3 layers, transition, dense block of 2, final norm, head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, growth: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_channels, 16, 3, padding=1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(16))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("denseblock1", _DenseBlock(3, 16, growth))
        c = 16 + 3 * growth
        self.features.add_module("transition1", _Transition(c, c // 2))
        self.features.add_module("denseblock2", _DenseBlock(2, c // 2, growth))
        c = c // 2 + 2 * growth
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


class VGGLike(nn.Module):
    """torchvision's VGG with BN: a flat Sequential of conv, BN, ReLU and max pools."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in (16, 16, "M", 32, 32):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(cin, v, 3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torchvision_style_resnet(num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """A builder with torchvision's signature: ``num_classes`` only, always three input channels."""
    return ResNetLike(3, num_classes)


# --- units that join parallel branches by a concatenation -------------------------------------


class BasicConv2d(nn.Module):
    """GoogLeNet's and Inception-v3's conv + BN + ReLU module."""

    def __init__(self, cin: int, cout: int, kernel_size: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """torchvision's GoogLeNet Inception module: four branches, one of them a max pool."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, 1), BasicConv2d(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, 1), BasicConv2d(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), BasicConv2d(cin, pool, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)


class InceptionReduction(nn.Module):
    """Inception-v3's InceptionB: strided branches and a strided max pool, concatenated."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 8, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 4, 1)
        self.branch3x3dbl_2 = BasicConv2d(4, 8, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(8, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, dbl, branch_pool], 1)


class GoogLeNetLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(in_channels, 8, 3, padding=1)
        self.inception_a = Inception(8, 4, 4, 8, 2, 4, 4)  # 8 -> 20 channels
        self.inception_b = Inception(20, 4, 4, 8, 2, 4, 4)  # 20 -> 20
        self.reduce = InceptionReduction(20)  # 20 -> 36 channels, half the size
        self.fc = nn.Linear(36, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(self.inception_b(self.inception_a(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Fire(nn.Module):
    """torchvision's SqueezeNet Fire module: a squeeze conv feeding two concatenated expands."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNetLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            Fire(16, 4, 8, 8),  # 16 -> 16
            Fire(16, 4, 16, 16),  # 16 -> 32
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(32, num_classes, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual: stride 1 splits the channels in two and
    transforms one half; stride 2 transforms the input twice; both concatenate and shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            )  # fmt: skip
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        # Two units after the strided one, as torchvision has: Torch-Pruning's dependency
        # graph then fails on the channel shuffle (filter pruning refuses the model).
        self.stage2 = nn.Sequential(
            ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), ShuffleUnit(16, 16, 1)
        )
        self.conv5 = nn.Sequential(
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(self.stage2(self.conv1(x))).mean([2, 3]))


class GoogLeNetOutputs(tuple):
    """What torchvision's GoogLeNet returns in training mode: logits, then auxiliary logits."""


class GoogLeNetWithAux(GoogLeNetLike):
    """GoogLeNetLike with an auxiliary classifier that runs in training mode only."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__(in_channels, num_classes)
        self.aux = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        a = self.inception_a(self.conv1(x))
        x = self.reduce(self.inception_b(a))
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        if not self.training:
            return logits
        return GoogLeNetOutputs((logits, self.aux(torch.flatten(self.aux_pool(a, x), 1))))

    def aux_pool(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the auxiliary classifier reads: the first Inception module's output, pooled."""
        return F.adaptive_avg_pool2d(a, 1)


def googlenet_with_aux(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return GoogLeNetWithAux(in_channels, num_classes)


class AuxNeedsLargerInputs(GoogLeNetWithAux):
    """Inception-v3's auxiliary head on small inputs: a 5x5 pooling, in training mode only,
    of a map smaller than 5x5 ("Output size is too small")."""

    def aux_pool(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 5, 3)


class Bottle2neck(nn.Module):
    """timm's Res2Net bottleneck: the 1x1 conv's output split into ``scale`` pieces, each
    but the last through a 3x3 conv fed the previous one's output (added), concatenated
    again, a 1x1 conv, and the shortcut. Written as timm writes it, with ``sp = spx[0]``
    taken once more than used."""

    def __init__(self, cin: int, planes: int, first: bool, scale: int = 4) -> None:
        super().__init__()
        width, self.first, self.scale = planes // scale, first, scale
        self.conv1 = nn.Conv2d(cin, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, 1, 1) if first else None
        self.conv3 = nn.Conv2d(width * scale, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes))
            if first
            else None
        )
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = F.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = spx[i] if i == 0 or self.first else sp + spx[i]
            sp = F.relu(bn(conv(sp)))
            spo.append(sp)
        spo.append(self.pool(spx[-1]) if self.pool is not None else spx[-1])
        out = self.bn3(self.conv3(torch.cat(spo, 1)))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut
        return F.relu(out)


class Res2NetLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.layer1 = nn.Sequential(Bottle2neck(16, 32, True), Bottle2neck(32, 32, False))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1(self.conv1(x)).mean((2, 3)))


class GhostModule(nn.Module):
    """timm's GhostNet module: a 1x1 conv makes half the channels, a depthwise conv of
    those the rest; concatenated, then sliced to the channels asked for."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.out_chs, init = cout, (cout + 1) // 2
        act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.primary_conv = nn.Sequential(
            nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), act
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), nn.BatchNorm2d(init),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out[:, : self.out_chs, :, :]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid)
        self.ghost2 = GhostModule(mid, cout, relu=False)
        self.shortcut = (
            nn.Sequential()
            if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


class GhostNetLike(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(GhostBottleneck(16, 24, 16), GhostBottleneck(16, 40, 24))
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv_stem(x)))
        return self.fc(self.blocks(x).mean((2, 3)))


class TupleOutput(InlineResidualNet):
    """A model returning (logits, features) in eval mode too."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = super().forward(x)
        return logits, logits.detach()


def seven_classes(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """A model built for 7 classes whatever the data has (``num_classes`` ignored)."""
    return InlineResidualNet(in_channels, 7)


class NoConv(nn.Module):
    """A classifier of linear layers only, for 8x8 inputs (digits): no channel group filter
    pruning could thin."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * 64, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def needs_depth(depth: int, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """A builder with an argument prunerd does not know."""
    return InlineResidualNet(in_channels, num_classes)


def in_channels_only(in_channels: int = 3) -> nn.Module:
    """A builder taking the input channels but not the classes: called with them."""
    return InlineResidualNet(in_channels, 10)
