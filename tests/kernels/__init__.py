"""Tests of chip_fast.kernels as a whole: every Triton kernel compiles for the GPUs it targets.
(Each kernel against its PyTorch reference: tests/ops/, one file per op.)"""
