"""The tail of a token layer on CUDA (``TailRunner``): its input buffer lies token-major in
memory, (rows, tokens, channels), as the tail reads it after turning it back from channels
first, and the fused perturbation writes into that layout what the reference computes. Without
CUDA the kernel runs under Triton's interpreter."""
from __future__ import annotations

import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1 before anything imports triton.
from tests.kernel_helpers import DEV, assert_close, skip_unless_runnable

from chip_fast.distill.tails import TailRunner
from chip_fast.kernels import perturb as kperturb
from chip_fast.models.split import SplitModel
from chip_fast.ops.perturb import perturb_kernel, perturb_reference
from tests.helpers import TinyViT

skip_unless_runnable(kperturb._perturb_kernel)


def test_token_rows_are_token_major_and_the_kernel_fills_them():
    torch.manual_seed(0)
    model = TinyViT().eval().to(DEV)
    split = SplitModel(model, ["act"])
    x = torch.randn(3, 3, 16, 16, device=DEV)
    with torch.no_grad():
        out = split.run_prefix(x)
    acts = split.activation(out, "act")                                 # (3, 32, 17)
    runner = TailRunner(split, "act", DEV, torch.float32, graphs=False)
    assert runner.tokens
    buf = runner._empty((4, 32, 17))
    assert buf.shape == (4, 32, 17) and buf.transpose(1, 2).is_contiguous()
    view = torch.tensor([2, 0, 1, 2], device=DEV)
    classes = torch.tensor([1, 2, 3, 0], device=DEV)
    samples = torch.tensor([5, 6, 7, 8], device=DEV)
    kw = dict(seed=3, p_keep=0.5, fill="noise", mu=torch.zeros(32, device=DEV),
              sigma=torch.ones(32, device=DEV))
    got = perturb_kernel(acts, view, classes, samples, out=buf, **kw)
    ref, _ = perturb_reference(acts, view, classes, samples, **kw)
    assert got is buf
    assert_close(got, ref, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(runner(got, out, view), runner(ref.contiguous(), out, view))
