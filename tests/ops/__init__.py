"""Tests of chip_fast.ops, one file per hot op: its Triton kernel against its PyTorch reference
(tests/kernel_helpers.py sets them up), and the backend switch."""
