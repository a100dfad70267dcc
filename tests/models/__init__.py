"""Tests of chip_fast.models: default layers, the split into prefix and tails,
EfficientNet-Lite0."""
