"""Tests of chip_fast.evaluation: metrics, annotations, datasets, peers, interop and the runner."""
