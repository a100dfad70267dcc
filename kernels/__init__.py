"""Triton kernels of chip_fast's hot paths, installed as ``chip_fast.kernels``.

Each module holds short kernels with their launch wrappers beside them; the PyTorch reference of
each lives in the chip_fast module that dispatches to it.
"""
