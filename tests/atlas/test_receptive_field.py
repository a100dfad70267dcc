"""The receptive fields (``chip_fast.atlas.receptive_field``): on conv stacks whose gradient is
known in closed form, the measured ERF side, its centre and the theoretical field come out
exactly; the probed channels are ones that move the cell."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from chip_fast.atlas.receptive_field import (centroid_offset, gradient_rows, live_channels,
                                             measure_erf, side_of_share, theoretical_rf)


def _stack(n: int, stride: int = 1, ones: bool = False, seed: int = 0) -> nn.Sequential:
    """``n`` 3x3 convolutions (padding 1, the first of ``stride``), 3 -> 4 -> 4 channels."""
    torch.manual_seed(seed)
    convs = [nn.Conv2d(3 if i == 0 else 4, 4, 3, stride=stride if i == 0 else 1, padding=1)
             for i in range(n)]
    if ones:
        for c in convs:
            nn.init.ones_(c.weight)
            nn.init.zeros_(c.bias)
    return nn.Sequential(*convs).eval()


def _erf(model: nn.Module, share: float, size: int = 16, views: int = 2):
    x = torch.randn(views, 3, size, size, generator=torch.Generator().manual_seed(1))
    return measure_erf(lambda v: {"l": model(v)}, x, ["l"], share=share)["l"], x


@pytest.mark.parametrize("n, side", [(1, 3), (2, 5), (3, 7)])
def test_erf_of_stacked_3x3_convolutions_is_their_gradient_support(n, side):
    erf, x = _erf(_stack(n), share=1.0)
    assert erf.side_px == side and erf.stride == 1.0 and erf.grid == (16, 16)
    assert erf.side_strides == side and erf.rows == 2 * 4     # 2 views x 4 channels, all live
    assert theoretical_rf(_stack(n), str(n - 1), x) == side
    ones, _ = _erf(_stack(n, ones=True), share=1.0)
    assert ones.side_px == side and ones.offset == pytest.approx((0.0, 0.0), abs=1e-9)


def test_erf_share_of_known_mass():
    # Ones-weights: one 3x3 conv's gradient is flat over 3x3, so a 2x2 square holds 4/9;
    # two convs' is the outer product of (1, 2, 3, 2, 1): a 4x4 square holds (8/9)^2 = 0.79.
    one, _ = _erf(_stack(1, ones=True), share=0.4)
    assert one.side_px == 2
    assert _erf(_stack(1, ones=True), share=0.5)[0].side_px == 3
    assert _erf(_stack(2, ones=True), share=0.78)[0].side_px == 4
    assert _erf(_stack(2, ones=True), share=0.8)[0].side_px == 5


def test_side_of_share_and_centroid_on_hand_made_masses():
    mass = torch.zeros(10, 10)
    mass[4, 4] = 1.0
    assert side_of_share(mass, (4.5, 4.5), 1.0) == 1
    assert centroid_offset(mass, (4.5, 4.5)) == (0.0, 0.0)
    mass[2:8, 2:8] = 1.0
    assert side_of_share(mass, (5.0, 5.0), 1.0) == 6
    assert side_of_share(mass, (5.0, 5.0), 16 / 36) == 4
    assert side_of_share(mass, (1.0, 1.0), 1.0) == 14        # off centre: the square grows
    assert centroid_offset(mass, (4.0, 6.0)) == pytest.approx((1.0, -1.0))
    with pytest.raises(ValueError, match="zero"):
        side_of_share(torch.zeros(4, 4), (2.0, 2.0), 0.8)
    with pytest.raises(ValueError, match="share"):
        _erf(_stack(1), share=0.0)


def test_a_strided_layer_looks_half_a_pixel_before_its_cell_centre():
    # A 3x3 conv of stride 2 and padding 1: cell i sees pixels 2i-1..2i+1 (centroid 2i + 0.5),
    # while the cell's centre on the input, (i + 0.5) x 2, is 2i + 1.
    erf, x = _erf(_stack(1, stride=2, ones=True), share=1.0)
    assert erf.stride == 2.0 and erf.grid == (8, 8)
    assert erf.offset == pytest.approx((-0.5, -0.5))
    assert erf.side_px == 4          # 3 pixels, centred half a pixel off: a 4 px square
    assert theoretical_rf(_stack(2, stride=2), "1", x) == 1 + 2 + 2 * 2


def test_theoretical_rf_counts_poolings_and_dilation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    assert theoretical_rf(model, "1", x) == 1 + 2 + 1
    assert theoretical_rf(model, "3", x) == 1 + 2 + 1 + 2 * 2 * 2
    with pytest.raises(ValueError, match="no module"):
        theoretical_rf(model, "nope", x)


def test_probed_channels_are_on_at_the_cell():
    centre = torch.tensor([[0.0, 3.0, -1.0, 1.0, 2.0],      # view 0: channels 1, 4, 3 on
                           [0.0, 0.0, 0.0, 0.0, 0.0]])     # view 1: none on
    rows = live_channels(centre, 2)
    on = {1, 4, 3}
    assert rows.shape == (4,)
    assert int(rows[0]) in on and int(rows[2]) in on and rows[0] != rows[2]   # view 0's rows
    # A ReLU net: the probed rows all have a gradient, the given channels may not.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    live = gradient_rows(lambda v: {"l": model(v)}, x, ["l"], per_view=3)["l"]
    assert live.shape == (9, 8, 8) and (live.flatten(1).amax(1) > 0).all()
    with torch.no_grad():
        off = (model(x)[:, :, 4, 4] <= 0).nonzero()[0]          # (view, channel) off at the cell
    given = torch.full((3,), int(off[1]))
    dead = gradient_rows(lambda v: {"l": model(v)}, x, ["l"], channels={"l": given})["l"]
    assert dead[int(off[0])].abs().sum() == 0
