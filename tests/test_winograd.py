"""Winograd F(4x4, 3x3) against torch's direct convolution (modeling.winograd)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import detres.modeling.winograd as winograd
from detres.modeling.winograd import (MAX_POSITIONS, WinogradConv2d, replace_convs, use_winograd,
                                      winograd_conv3x3, winograd_weight)

#: Winograd's output against the direct convolution's: at most this fraction of the output's largest value.
#: Not bit-exact (the transforms round differently): a correct transform is ~1e-5 off in fp32, far below this;
#: any wrong coefficient or tile offset is far above it (the negative controls below).
TOL = 1e-4


def _relative_error(x, w, b=None):
    """max |Winograd - direct| / max |direct| for conv2d(x, w, b, padding=1)."""
    expect = F.conv2d(x, w, b, padding=1)
    got = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_weight(w), b)
    assert got.shape == expect.shape
    return float((got - expect).abs().max() / expect.abs().max())


@pytest.mark.parametrize("shape", [(2, 128, 7, 7), (1, 130, 13, 9), (3, 128, 1, 1), (1, 128, 4, 8), (1, 128, 38, 63)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_direct_convolution(shape, bias):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    k = 96
    w = torch.randn(k, shape[1], 3, 3, generator=g) / (9 * shape[1]) ** 0.5
    b = torch.randn(k, generator=g) if bias else None
    assert _relative_error(x, w, b) <= TOL


def _control_input():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 128, 9, 11, generator=g), torch.randn(32, 128, 3, 3, generator=g) / 34


@pytest.mark.parametrize("matrix", ["_BT", "_G", "_AT"])
def test_a_wrong_coefficient_is_caught(matrix, monkeypatch):
    """Negative control: every entry of each transform matrix (B^T, G, A^T), moved by 1e-3 (less than a typo
    such as 1/25 for 1/24, 1.7e-3), fails the check above; the right matrices pass it."""
    x, w = _control_input()
    assert _relative_error(x, w) <= TOL
    right = getattr(winograd, matrix)
    for idx in range(right.numel()):
        wrong = right.clone()
        wrong.view(-1)[idx] += 1e-3
        monkeypatch.setattr(winograd, matrix, wrong)
        assert _relative_error(x, w) > TOL, (matrix, divmod(idx, right.shape[1]))


def test_a_wrong_tile_offset_is_caught():
    """Negative control: the tiles one column off (padding on the other side) fail the check above."""
    x, w = _control_input()
    expect = F.conv2d(x, w, padding=1)
    shifted = winograd_conv3x3(torch.roll(x, 1, dims=3), winograd_weight(w))
    assert (shifted - expect).abs().max() > TOL * expect.abs().max()


def test_which_convs_qualify():
    assert use_winograd(nn.Conv2d(128, 64, 3, padding=1))
    assert not use_winograd(nn.Conv2d(64, 64, 3, padding=1))  # too few channels to pay
    assert not use_winograd(nn.Conv2d(128, 64, 3, padding=1, stride=2))
    assert not use_winograd(nn.Conv2d(128, 64, 1))
    assert not use_winograd(nn.Conv2d(128, 64, 3, padding=2, dilation=2))
    assert not use_winograd(nn.Conv2d(128, 128, 3, padding=1, groups=2))
    with pytest.raises(ValueError, match="3x3"):
        WinogradConv2d(nn.Conv2d(128, 64, 1))


def test_module_falls_back_where_it_does_not_pay_or_apply():
    conv = nn.Conv2d(128, 16, 3, padding=1).eval()
    wino = WinogradConv2d(conv)
    small = torch.randn(1, 128, 10, 10)
    big = torch.randn(1, 128, 1, MAX_POSITIONS + 1)
    with torch.no_grad():
        assert not torch.equal(wino(small), conv(small))  # the Winograd path (rounds differently)...
        torch.testing.assert_close(wino(small), conv(small), rtol=1e-4, atol=1e-4)  # ...to the same values
        assert torch.equal(wino(big), conv(big))  # a large map: the direct convolution, bit for bit
        conv.double()  # not fp32: the direct convolution
        assert torch.equal(wino(small.double()), conv(small.double()))
        conv.float()
    assert torch.equal(wino(small), conv(small))  # with gradients: the direct convolution (its weight trains)


def test_replace_convs_in_a_network():
    net = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                        nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, stride=2), nn.Conv2d(128, 8, 3, padding=1)))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expect = net(x)
        assert replace_convs(net) == 2
        torch.testing.assert_close(net(x), expect, rtol=1e-4, atol=1e-4)
    assert isinstance(net[2], WinogradConv2d) and isinstance(net[3][1], WinogradConv2d)
    assert isinstance(net[3][0], nn.Conv2d)
