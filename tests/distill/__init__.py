"""Tests of chip_fast.distill: the entry point, jobs, checkpoints, tails, memory, and runs across
processes."""
