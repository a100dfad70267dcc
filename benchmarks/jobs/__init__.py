"""Whole-job timings of chip_fast, one module per named configuration, run from the repository
root as ``python -m benchmarks.jobs <name> [options]`` (``python -m benchmarks.jobs`` lists
them; ``<name> --help`` gives a job's options). Each writes through ``record.write_result``."""
