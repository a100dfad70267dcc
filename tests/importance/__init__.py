"""Tests of chip_fast.importance: the importance file and its integrity check."""
