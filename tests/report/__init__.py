"""Tests of chip_fast.report: overlays on photos."""
