"""The CPU path of ``chip_fast.ops.perturb`` for the zero and mean fills of channels-last
activations (``perturb_by_product``) against ``perturb_reference``: the same activations bit for
bit, the same masks, channels-last out."""
from __future__ import annotations

import pytest
import torch

from chip_fast.ops.perturb import perturb, perturb_by_product, perturb_reference


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(5, 13, 6, 7, generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last)
    t = 23
    view = torch.randint(0, 5, (t,), generator=g)
    classes = torch.randint(0, 4, (t,), generator=g)
    samples = torch.randint(0, 10_000, (t,), generator=g)
    mu = torch.randn(13, generator=g)
    return acts, view, classes, samples, mu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fill", ["zero", "mean"])
@pytest.mark.parametrize("design", ["independent", "antithetic", "orthogonal"])
def test_the_product_path_equals_the_reference(dtype, fill, design):
    acts, view, classes, samples, mu = inputs(dtype, seed=hash((fill, design)) % 1000)
    kw = dict(seed=7, p_keep=0.5, fill=fill, mu=mu, sigma=torch.ones(13), design=design,
              folds=4)
    got, masks = perturb(acts, view, classes, samples, **kw)
    want, want_masks = perturb_reference(acts, view, classes, samples, **kw)
    assert torch.equal(masks, want_masks)
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)
    # the product path really ran: dropped channels hold the fill, kept ones their view
    rows, chans = (~masks).nonzero(as_tuple=True)
    fill_values = torch.zeros(len(chans), dtype=dtype) if fill == "zero" else mu.to(dtype)[chans]
    assert torch.equal(got[rows, chans], fill_values[:, None, None].expand(-1, 6, 7))
    assert torch.equal(got[masks], acts[view][masks])


def test_noise_fill_and_other_layouts_take_the_reference():
    acts, view, classes, samples, mu = inputs(torch.float32)
    kw = dict(seed=3, p_keep=0.5, mu=mu, sigma=torch.ones(13))
    for fill, a in (("noise", acts), ("zero", acts.contiguous())):
        got, _ = perturb(a, view, classes, samples, fill=fill, **kw)
        want, _ = perturb_reference(a, view, classes, samples, fill=fill, **kw)
        assert torch.equal(got, want)


def test_an_empty_batch():
    acts, _, _, _, mu = inputs(torch.float32)
    empty = torch.zeros(0, dtype=torch.long)
    out = perturb_by_product(acts, empty, torch.zeros(0, 13, dtype=torch.bool), "zero", mu)
    assert out.shape == (0, 13, 6, 7)
