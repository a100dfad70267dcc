"""Tests of chip_fast.atlas: the channel atlas collected during distillation."""
