"""Tests of chip_fast.data: preprocessing, class orders, and the sources a distillation reads."""
