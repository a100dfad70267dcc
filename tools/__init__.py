"""Checks of the GPU code, run from the repository root as ``python -m tools.<name>`` (or through
the ``bash tools/<name>.sh`` wrappers): ``compile_check`` compiles every Triton kernel for
sm_90/sm_80 without a GPU; ``gpu_check.sh`` is the one script for a GPU machine (its steps:
``gpu_steps``, ``gpu_engine_check`` with the parts in ``engine_parts`` and ``speed_parts`` and
the records of ``targets``, ``gpu_collectives``); ``launch_count`` counts the host work of one
tail batch. Results go to ``tools/results/`` (or $OUT).

A package run with ``-m``, so that a bare copy of the repository (what a GPU machine receives)
imports its own chip_fast without an install: the current directory comes first on sys.path.
"""
