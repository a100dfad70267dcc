"""Tests of chip_fast.ops: each hot op's kernel path against its reference, and the backend
switch."""
