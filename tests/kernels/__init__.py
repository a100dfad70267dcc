"""Tests of chip_fast.kernels called directly: Triton kernels against their PyTorch references,
and every kernel compiling for the GPUs it targets."""
