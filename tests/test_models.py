"""Model zoo: output shapes, registry errors, and CMI checkpoint-layout compatibility.

The expected CMI state-dict layouts below are written by hand from the CMI / Fast-Datafree
``datafree/models/classifiers/{resnet,wresnet,vgg}.py`` definitions, independent of our model code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffdfkd.models import create_model, list_models

Shapes = dict[str, tuple[int, ...]]

EXPECTED_NAMES = {
    "resnet18",
    "resnet34",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg11_bn",
    "lenet5",
    "cnn_small",
}


def _conv(shapes: Shapes, key: str, out_c: int, in_c: int, k: int, bias: bool = False) -> None:
    shapes[f"{key}.weight"] = (out_c, in_c, k, k)
    if bias:
        shapes[f"{key}.bias"] = (out_c,)


def _bn(shapes: Shapes, key: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{key}.{name}"] = (c,)
    shapes[f"{key}.num_batches_tracked"] = ()


def _linear(shapes: Shapes, key: str, out_f: int, in_f: int) -> None:
    shapes[f"{key}.weight"] = (out_f, in_f)
    shapes[f"{key}.bias"] = (out_f,)


def cmi_resnet_shapes(blocks_per_layer: list[int], num_classes: int = 10) -> Shapes:
    """CMI resnet.py: conv1/bn1 stem, layerN.i.{conv1,bn1,conv2,bn2}, shortcut.{0,1} on downsampling."""
    shapes: Shapes = {}
    _conv(shapes, "conv1", 64, 3, 3)
    _bn(shapes, "bn1", 64)
    in_planes = 64
    for layer, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks_per_layer, strict=True), start=1):
        for i in range(count):
            prefix = f"layer{layer}.{i}"
            _conv(shapes, f"{prefix}.conv1", planes, in_planes, 3)
            _bn(shapes, f"{prefix}.bn1", planes)
            _conv(shapes, f"{prefix}.conv2", planes, planes, 3)
            _bn(shapes, f"{prefix}.bn2", planes)
            if in_planes != planes:  # first block of layer2..layer4 (stride 2)
                _conv(shapes, f"{prefix}.shortcut.0", planes, in_planes, 1)
                _bn(shapes, f"{prefix}.shortcut.1", planes)
            in_planes = planes
    _linear(shapes, "linear", num_classes, 512)
    return shapes


def cmi_wrn_shapes(depth: int, widen: int, num_classes: int = 10) -> Shapes:
    """CMI wresnet.py: conv1, blockN.layer.i.{bn1,conv1,bn2,conv2[,convShortcut]}, bn1, fc (with bias)."""
    n = (depth - 4) // 6
    shapes: Shapes = {}
    _conv(shapes, "conv1", 16, 3, 3)
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    for stage in range(1, 4):
        in_c, out_c = widths[stage - 1], widths[stage]
        for i in range(n):
            c_in = in_c if i == 0 else out_c
            prefix = f"block{stage}.layer.{i}"
            _bn(shapes, f"{prefix}.bn1", c_in)
            _conv(shapes, f"{prefix}.conv1", out_c, c_in, 3)
            _bn(shapes, f"{prefix}.bn2", out_c)
            _conv(shapes, f"{prefix}.conv2", out_c, out_c, 3)
            if c_in != out_c:
                _conv(shapes, f"{prefix}.convShortcut", out_c, c_in, 1)
    _bn(shapes, "bn1", widths[3])
    _linear(shapes, "fc", num_classes, widths[3])
    return shapes


def cmi_vgg11_bn_shapes(num_classes: int = 10) -> Shapes:
    """CMI vgg.py (RepDistiller), cfg A with BN: each block is conv,bn,relu,... minus the last relu."""
    shapes: Shapes = {}
    # (block, index in the Sequential, out channels, in channels): convs at 0 and 3, BNs at 1 and 4.
    convs = [
        (0, 0, 64, 3),
        (1, 0, 128, 64),
        (2, 0, 256, 128),
        (2, 3, 256, 256),
        (3, 0, 512, 256),
        (3, 3, 512, 512),
        (4, 0, 512, 512),
        (4, 3, 512, 512),
    ]
    for block, index, out_c, in_c in convs:
        _conv(shapes, f"block{block}.{index}", out_c, in_c, 3, bias=True)
        _bn(shapes, f"block{block}.{index + 1}", out_c)
    _linear(shapes, "classifier", num_classes, 512)
    return shapes


def _random_state_dict(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


CMI_LAYOUTS = {
    "resnet18": lambda: cmi_resnet_shapes([2, 2, 2, 2]),
    "resnet34": lambda: cmi_resnet_shapes([3, 4, 6, 3]),
    "wrn_16_1": lambda: cmi_wrn_shapes(16, 1),
    "wrn_16_2": lambda: cmi_wrn_shapes(16, 2),
    "wrn_40_1": lambda: cmi_wrn_shapes(40, 1),
    "wrn_40_2": lambda: cmi_wrn_shapes(40, 2),
    "vgg11_bn": cmi_vgg11_bn_shapes,
}


def test_list_models_has_the_zoo() -> None:
    assert set(list_models()) == EXPECTED_NAMES
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize("in_channels", [3, 1])
def test_logits_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, 32, 32))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_has_batchnorm(name: str) -> None:
    assert any(isinstance(m, nn.BatchNorm2d) for m in create_model(name).modules())


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        create_model("resnet_999")
    message = str(info.value)
    assert "resnet_999" in message
    for name in EXPECTED_NAMES:
        assert name in message


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0}, {"num_classes": 2.5}])
def test_bad_sizes_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be a positive int"):
        create_model("lenet5", **kwargs)


def test_cmi_layout_spot_checks() -> None:
    r34 = cmi_resnet_shapes([3, 4, 6, 3])
    assert r34["linear.weight"] == (10, 512)
    assert r34["conv1.weight"] == (64, 3, 3, 3)
    assert r34["layer3.5.conv2.weight"] == (256, 256, 3, 3)
    assert r34["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert "layer1.0.shortcut.0.weight" not in r34
    wrn = cmi_wrn_shapes(40, 2)
    assert wrn["block1.layer.0.convShortcut.weight"] == (32, 16, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in wrn
    assert wrn["fc.weight"] == (10, 128)
    assert "block1.layer.0.convShortcut.weight" not in cmi_wrn_shapes(16, 1)
    vgg = cmi_vgg11_bn_shapes()
    assert vgg["block2.3.weight"] == (256, 256, 3, 3)
    assert vgg["classifier.weight"] == (10, 512)


@pytest.mark.parametrize("name", sorted(CMI_LAYOUTS))
def test_cmi_checkpoint_loads_strict(name: str) -> None:
    expected = CMI_LAYOUTS[name]()
    state = _random_state_dict(expected)
    model = create_model(name, num_classes=10)
    # strict=True fails on any missing/unexpected key or shape mismatch.
    model.load_state_dict(state, strict=True)
    ours = model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    for key, value in state.items():
        torch.testing.assert_close(ours[key], value)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 32, 32))).all()


def test_cmi_layout_with_cifar100_head() -> None:
    model = create_model("resnet34", num_classes=100)
    model.load_state_dict(_random_state_dict(cmi_resnet_shapes([3, 4, 6, 3], num_classes=100)), strict=True)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_in_channels_changes_only_first_conv(name: str) -> None:
    rgb = {k: v.shape for k, v in create_model(name).state_dict().items()}
    gray = {k: v.shape for k, v in create_model(name, in_channels=1).state_dict().items()}
    assert rgb.keys() == gray.keys()
    differing = [k for k in rgb if rgb[k] != gray[k]]
    assert len(differing) == 1
    assert rgb[differing[0]][1] == 3 and gray[differing[0]][1] == 1


@pytest.mark.parametrize(
    ("name", "module", "shape"),
    [
        ("resnet18", "layer1", (64, 32, 32)),  # 3x3 stem, no max-pool
        ("resnet18", "layer4", (512, 4, 4)),
        ("wrn_40_2", "block3", (128, 8, 8)),
        ("vgg11_bn", "block3", (512, 4, 4)),
        ("vgg11_bn", "block4", (512, 4, 4)),  # no pool after block3 for 32x32 inputs
    ],
)
def test_feature_map_sizes(name: str, module: str, shape: tuple[int, ...]) -> None:
    model = create_model(name).eval()
    seen: list[torch.Size] = []
    getattr(model, module).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [torch.Size((1, *shape))]
