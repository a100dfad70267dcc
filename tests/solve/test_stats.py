"""Streamed sufficient statistics (``chip_fast.solve.stats``): the mask moments and the
covariances from streamed sums equal the covariances of the explicit samples."""
from __future__ import annotations

import torch

from chip_fast import rng
from chip_fast.ops.response_sums import response_sums_reference
from chip_fast.solve.stats import covariances, mask_moments


def test_streamed_statistics_equal_direct_covariances():
    n, k = 300, 9
    z = rng.keep_masks(3, torch.arange(n), k, 0.5).double()
    y = torch.randn(2, n, dtype=torch.float64)
    s1, s2 = mask_moments(3, n, k, 0.5, chunk=64)
    assert s1.dtype == torch.int64 and torch.equal(s2, (z.t() @ z).round().long())
    szy, sy = [], []
    for c in range(2):
        a, b, _ = response_sums_reference(z.bool(), y[c], torch.zeros(n, dtype=torch.long), 1)
        szy.append(a[0]); sy.append(b[0])
    gram, r = covariances(s1, s2, torch.stack(szy), torch.stack(sy), n)
    zc = z - z.mean(0)
    torch.testing.assert_close(gram, zc.t() @ zc / n)
    torch.testing.assert_close(r, (y - y.mean(1, keepdim=True)) @ zc / n)
