"""Tests of chip_fast.solve: streamed statistics, the Lasso, refits and held-out checks."""
