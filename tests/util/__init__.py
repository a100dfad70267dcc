"""Tests of chip_fast.util: CPU counts and locks."""
