"""Tests of chip_fast.maps: explaining images with an importance file."""
