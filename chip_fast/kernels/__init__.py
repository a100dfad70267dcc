"""Triton kernels of chip_fast's hot paths, installed as ``chip_fast.kernels``.

One module per op, each its kernel(s) with the launch wrapper beside them: ``perturb``
(perturb_triton), ``response_sums`` (response_sums_triton), ``class_maps`` (class_maps_triton),
``prox`` (fista_step_triton). Shared pieces: ``philox`` (Philox4x32-10 and Box-Muller device
functions), ``launch`` (host-side argument helpers).

The PyTorch reference of each op and the dispatch to its kernel live in the chip_fast module of
the same name, which imports the kernel module lazily, only on CUDA. The dependency runs one way:
nothing here imports chip_fast. What the kernels need of chip_fast (the rng counter layout, key
words, keep threshold) arrives as launch arguments.
"""
