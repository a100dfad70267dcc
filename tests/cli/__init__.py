"""Tests of chip_fast.cli: the parsers of the chip-fast command (its runs are in tests/e2e)."""
