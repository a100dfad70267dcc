"""Checks of the GPU code, run from the repository root as ``python -m tools.<name>`` (or through
the ``bash tools/<name>.sh`` wrappers): ``compile_check`` compiles every Triton kernel for
sm_90/sm_80 without a GPU; ``gpu_check.sh`` with ``gpu_engine_check`` checks kernels and engine
on a GPU. Results go to ``tools/results/``.

A package run with ``-m``, so that a bare copy of the repository (what a GPU machine receives)
imports its own chip_fast without an install: the current directory comes first on sys.path.
"""
