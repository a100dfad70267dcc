"""Speed measurements of chip_fast, run from the repository root.

- ``test_<op>.py``: pytest-benchmark files of the hot ops against their PyTorch references
  (``python -m pytest benchmarks/ --benchmark-only``; they skip without CUDA).
- ``jobs/``: whole-job timings by name (``python -m benchmarks.jobs <name> [options]``).
- ``results/``: what they measured, with the machine that measured it.

A package, so that its benchmark modules are ``benchmarks.test_<op>`` to pytest and do not clash
with ``tests/test_<op>.py``, and so that ``python -m`` run from a bare copy of the repository
imports the copy's own chip_fast (the current directory comes first on sys.path).
"""
