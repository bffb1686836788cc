"""The detres.backbones contract, parity with torchvision, freezing and weight loading (Table 1: test_model_stats)."""
from __future__ import annotations


import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detres.backbones import (MSRA_META, build_backbone, build_c4, build_classifier, list_backbones, list_classifiers,
                              read_weights)
from detres.backbones.stats import count_gflops, count_params

ALL_FEATURES = {
    "resnet": ("stem", "res2", "res3", "res4", "res5"),
    "vgg": ("conv1", "conv2", "conv3", "conv4", "conv5"),
}


def _features(name):
    return ALL_FEATURES["vgg" if name == "vgg16" else "resnet"]


def test_list_backbones():
    assert list_backbones() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16"]


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's floor rule)."""
    return (n + 2 * padding - kernel) // stride + 1


def _expected_size(name: str, feature: str, n: int) -> int:
    """The map size of ``feature`` for an input side ``n``, from the architecture's layers.

    VGG-16: 3x3 convs with padding 1 keep the size; each of the pools before ``feature`` is 2x2, stride 2.
    ResNet: conv1 (7x7, stride 2, padding 3) and pool1 (3x3, stride 2, padding 1) make the stem; res2 keeps
    its size; each later stage starts with a stride-2 block (a 3x3 with padding 1 or, msra style, a 1x1: the
    same length) beside a stride-2 1x1 projection."""
    stage = _features(name).index(feature)
    if name == "vgg16":
        for _ in range(stage):
            n = _conv_out(n, 2, 2, 0)
        return n
    n = _conv_out(_conv_out(n, 7, 2, 3), 3, 2, 1)
    for _ in range(max(0, stage - 1)):
        n = _conv_out(n, 3, 2, 1)
    return n


def test_expected_sizes_tell_floor_from_ceil():
    """The sides used below round differently under floor and ceil (ResNet's padded layers round up, VGG's
    pools down), so a net that rounds the other way fails the contract test."""
    assert [_expected_size("resnet50", f, 83) for f in ALL_FEATURES["resnet"]] == [21, 21, 11, 6, 3]
    assert [_expected_size("vgg16", f, 83) for f in ALL_FEATURES["vgg"]] == [83, 41, 20, 10, 5]
    assert [_expected_size("resnet18", "res5", n) for n in (57, 33, 97)] == [2, 2, 4]
    assert [_expected_size("vgg16", "conv5", n) for n in (57, 33, 97)] == [3, 2, 6]


@pytest.mark.parametrize("name", list_backbones())
def test_declared_specs_match_outputs(name):
    net = build_backbone(name, out_features=_features(name), freeze_at=0).eval()
    for size in [(83, 57), (97, 33), (51, 75)]:  # odd sides: the rounding of every stride-2 layer shows
        with torch.no_grad():
            out = net(torch.rand(1, 3, *size))
        assert list(out) == list(_features(name)) == list(net.feature_specs)
        for key, fmap in out.items():
            spec = net.feature_specs[key]
            expect = tuple(_expected_size(name, key, s) for s in size)
            assert (fmap.shape[1], *fmap.shape[-2:]) == (spec.channels, *expect), (key, size)
    assert net.out_channels == net.feature_specs[_features(name)[-1]].channels


@pytest.mark.parametrize("name", list_backbones())
def test_unrequested_stages_are_not_built(name):
    first = _features(name)[1]
    net = build_backbone(name, out_features=(first,))
    assert list(net.feature_specs) == [first]
    if name == "vgg16":
        assert len(net.features) == 9  # conv1_1..conv2_2 with their ReLUs and pool1
    else:
        assert hasattr(net, "layer1") and not hasattr(net, "layer2")


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet51")
    with pytest.raises(ValueError, match="unknown feature 'res6'"):
        build_backbone("resnet18", out_features=("res6",))
    with pytest.raises(ValueError, match="unknown norm"):
        build_backbone("resnet18", norm="layernorm")
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone("resnet18", freeze_at=6)


def _randomise(model: nn.Module) -> None:
    """Random weights and BN statistics, so parity cannot pass by symmetry of a fresh init.

    Weights are scaled by 1/sqrt(fan_in) and BN gains kept below 1, so activations stay O(1) through
    152 layers and an absolute tolerance of 1e-4 means something.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith(".weight"):  # BN gain
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)
            else:  # biases
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def tv_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tv")
    out = {}
    for name in ("resnet18", "resnet50", "resnet101", "vgg16"):
        model = getattr(torchvision.models, name)()
        _randomise(model)
        path = root / f"{name}.pth"
        torch.save(model.state_dict(), path)
        out[name] = (model.eval(), path)
    return out


def _tv_resnet_maps(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    maps = {"stem": x}
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        x = getattr(m, f"layer{i + 1}")(x)
        maps[name] = x
    return maps


def _tv_vgg_maps(m, x):
    taps = {3: "conv1", 8: "conv2", 15: "conv3", 22: "conv4", 29: "conv5"}
    maps = {}
    for i, layer in enumerate(m.features):
        x = layer(x)
        if i in taps:
            maps[taps[i]] = x
    return maps


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101", "vgg16"])
def test_parity_with_torchvision(name, tv_checkpoints):
    tv, path = tv_checkpoints[name]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = _tv_vgg_maps(tv, x) if name == "vgg16" else _tv_resnet_maps(tv, x)
        net = build_backbone(name, weights=path, out_features=_features(name)).eval()
        ours = net(x)
        for key in _features(name):
            torch.testing.assert_close(ours[key], ref[key], atol=1e-4, rtol=1e-4)

        trunk, head = build_c4(name, weights=path)
        trunk.eval(), head.eval()
        c4 = next(iter(trunk(x).values()))
        if name == "vgg16":
            torch.testing.assert_close(c4, ref["conv5"], atol=1e-4, rtol=1e-4)
            rois = torch.randn(3, 512, 7, 7)
            expected = tv.classifier[:6](torch.flatten(rois, 1))
        else:
            torch.testing.assert_close(c4, ref["res4"], atol=1e-4, rtol=1e-4)
            rois = torch.randn(3, c4.shape[1], 14, 14)
            expected = torch.flatten(tv.avgpool(tv.layer4(rois)), 1)
        torch.testing.assert_close(head(rois), expected, atol=1e-4, rtol=1e-4)

        clf = build_classifier(name, weights=path).eval()
        assert list(clf.state_dict()) == list(tv.state_dict())
        torch.testing.assert_close(clf(x[:, :, :32, :32] if name != "vgg16" else x), tv(x[:, :, :32, :32] if name != "vgg16" else x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_backbones())
def test_param_counts_equal_torchvision(name):
    ours = count_params(build_classifier(name))
    theirs = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    assert ours == theirs


def test_msra_style_moves_the_stride_to_the_1x1():
    msra = build_backbone("resnet50", style="msra", out_features=("res3",))
    tv = build_backbone("resnet50", style="pytorch", out_features=("res3",))
    assert msra.layer2[0].conv1.stride == (2, 2) and msra.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert count_gflops(build_classifier("resnet50", style="msra")) < count_gflops(build_classifier("resnet50"))


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_shortcut_options(shortcut):
    net = build_classifier("resnet34", shortcut=shortcut, num_classes=10)
    n_proj = sum(1 for m in net.modules() if isinstance(m, nn.Sequential) and len(m) == 2
                 and isinstance(m[0], nn.Conv2d) and m[0].kernel_size == (1, 1))
    assert n_proj == {"A": 0, "B": 3, "C": 16}[shortcut]
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 10)
    b_params = count_params(build_classifier("resnet34", num_classes=10))
    assert (count_params(net) < b_params) if shortcut == "A" else (count_params(net) >= b_params)


def _step(model, loss):
    """One SGD step on whatever is trainable (nothing is, when every stage is frozen)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        assert not loss.requires_grad
        return
    opt = torch.optim.SGD(params, lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
@pytest.mark.parametrize("freeze_at", [0, 2, 5])
def test_freeze_at_really_freezes(norm, freeze_at):
    net = build_backbone("resnet18", norm=norm, freeze_at=freeze_at, out_features=("res5",)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _step(net, net(torch.rand(2, 3, 64, 64))["res5"].square().mean())
    after = net.state_dict()
    prefixes = ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."][: (freeze_at + 1 if freeze_at else 0)]
    frozen = [k for k in before if k.startswith(tuple(prefixes))]
    moving = [k for k in before if not k.startswith(tuple(prefixes)) and ".conv" in "." + k]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    if freeze_at < 5:
        assert any(not torch.equal(before[k], after[k]) for k in moving)
    if norm == "frozen_bn":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        for k in before:
            if "running" in k or k.startswith("bn") or ".bn" in k:
                assert torch.equal(before[k], after[k]), k
    if norm == "bn" and freeze_at:
        assert isinstance(net.bn1, FrozenBatchNorm2d)


def test_vgg_freeze_at_2_fixes_conv1_and_conv2():
    trunk, head = build_c4("vgg16", freeze_at=2)
    trainable = {k for k, p in trunk.named_parameters() if p.requires_grad}
    assert not any(k.startswith(("features.0.", "features.2.", "features.5.", "features.7.")) for k in trainable)
    assert "features.10.weight" in trainable
    assert all(p.requires_grad for p in head.parameters())


def test_weights_errors(tmp_path, tv_checkpoints):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone("resnet18", weights=tmp_path / "nowhere.pth")
    state = torch.load(tv_checkpoints["resnet18"][1], weights_only=True)
    extra = dict(state, **{"layer9.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected keys.*layer9.weight"):
        build_backbone("resnet18", weights=tmp_path / "extra.pth")
    missing = {k: v for k, v in state.items() if not k.startswith("layer1.0.conv1")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing keys.*layer1.0.conv1.weight"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    # Wrong architecture: shapes do not fit.
    with pytest.raises(ValueError, match="shape mismatch|missing keys"):
        build_backbone("resnet50", weights=tv_checkpoints["resnet18"][1])
    # A style that disagrees with the weights' meta.
    torch.save({"model": state, "meta": dict(MSRA_META)}, tmp_path / "msra.pth")
    with pytest.raises(ValueError, match="'msra'-style"):
        build_backbone("resnet18", weights=tmp_path / "msra.pth", style="pytorch")
    # Not a torch file at all, and a pickle with code in it: refused, never executed.
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        read_weights(tmp_path / "junk.pth")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"x": Payload()}}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(ValueError, match="evil.pth"):
        read_weights(tmp_path / "evil.pth")
    assert not marker.exists()


def test_weights_meta_sets_bn_eps_and_travels(tmp_path):
    net = build_classifier("resnet18", num_classes=10)
    torch.save({"model": net.state_dict(), "meta": dict(MSRA_META)}, tmp_path / "w.pth")
    trunk, head = build_c4("resnet18", weights=tmp_path / "w.pth", style="msra")
    assert trunk.bn1.eps == 0.0 and trunk.weights_meta["channel_order"] == "BGR"
    assert head.weights_meta["style"] == "msra"


@pytest.mark.parametrize("name", [n for n in list_classifiers() if n.startswith("cifar_") and n != "cifar_resnet1202"])
def test_cifar_classifier_contract(name):
    """The backbone contract tests cover list_backbones() (detection trunks); the CIFAR nets are classifiers only,
    checked here against the Sec. 4.2 architecture: 6n + 2 weighted layers (6n 3x3 convs in the stages plus the
    first conv, then fc), 16/32/64 filters on 32/16/8 maps, logits [N, 10]. (ResNet-1202 has the same rule; its
    parameters are checked in the Table 6 test, building it here would cost seconds for nothing new.)"""
    from detres.backbones.cifar import cifar_spec

    n, residual = cifar_spec(name)
    net = build_classifier(name).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(fcs) == 6 * n + 2 and len(fcs) == 1 and fcs[0].out_features == 10
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    shapes = []
    hooks = [c.register_forward_hook(lambda m, i, o: shapes.append((o.shape[1], o.shape[2]))) for c in convs]
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    assert set(shapes) == {(16, 32), (32, 16), (64, 8)}
    assert name.startswith("cifar_resnet") == residual


# --------------------------------------------------------------------------------------------------
# each family takes its own options (issue 25 item 3)
# --------------------------------------------------------------------------------------------------
def test_families_take_their_own_options_and_refuse_others_by_name():
    from detres.backbones import (CifarOptions, ResNetOptions, VGGOptions, backbone_info, backbone_options,
                                  has_style)

    assert backbone_options("resnet50", width=32, shortcut="C") == ResNetOptions(shortcut="C", width=32,
                                                                                caffe_stem_pool=False)
    assert backbone_options("vgg16") == VGGOptions() and backbone_options("cifar_plain20") == CifarOptions()
    # the stride placement is a ResNet option (has_style used to answer has_width)
    assert [n for n in list_classifiers() if has_style(n)] == ["resnet18", "resnet34", "resnet50", "resnet101",
                                                               "resnet152"]
    assert backbone_info("vgg16").fc_head and not backbone_info("resnet18").fc_head
    assert (backbone_info("cifar_plain56").residual, backbone_info("cifar_plain56").label) == (False, "plain56")
    # neutral values (the builders' defaults) pass for a family without the option
    build_backbone("vgg16", out_features=("conv1",), style="pytorch", shortcut="B", width=64, caffe_stem_pool=False)
    for build, name, option, value in [(build_backbone, "vgg16", "caffe_stem_pool", True),
                                       (build_c4, "vgg16", "shortcut", "C"),
                                       (build_backbone, "vgg16", "style", "msra"),
                                       (build_classifier, "vgg16", "width", 32),
                                       (build_classifier, "cifar_resnet20", "width", 16),
                                       (build_classifier, "cifar_resnet20", "style", "msra")]:
        with pytest.raises(ValueError, match=f"{name}: a .* network has no {option} option .*got {option}="):
            build(name, **{option: value})
    with pytest.raises(ValueError, match=r"cifar_resnet20: its name fixes the shortcut \(A\); got shortcut='C'"):
        build_classifier("cifar_resnet20", shortcut="C")
    build_classifier("cifar_plain20", shortcut="A")  # accepted: the study's shared config sets A for every net
    with pytest.raises(ValueError, match="width must be a positive number of channels, got 0"):
        build_backbone("resnet18", width=0)
    with pytest.raises(ValueError, match="resnet18: unknown backbone option 'depth'; options: "
                                         r"\['caffe_stem_pool', 'shortcut', 'style', 'width'\]"):
        backbone_options("resnet18", depth=3)


def test_an_option_the_family_refuses_is_reported_with_its_config_key():
    from detres.config import DetConfig
    from detres.modeling import BackboneSpec
    from detres.tasks.detection import detector_spec

    cfg = DetConfig()
    cfg.model.backbone.name, cfg.model.backbone.caffe_stem_pool = "vgg16", True
    with pytest.raises(ValueError, match="config key 'model.backbone.caffe_stem_pool': vgg16: a vgg network has "
                                         "no caffe_stem_pool option"):
        detector_spec(cfg)
    with pytest.raises(ValueError, match="backbone.width: vgg16: a vgg network has no width option"):
        BackboneSpec(name="vgg16", width=32)
    cfg.model.backbone.caffe_stem_pool = False
    assert detector_spec(cfg).backbone.name == "vgg16"
