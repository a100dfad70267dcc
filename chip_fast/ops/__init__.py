"""The hot operations, one module each: its PyTorch reference and the dispatch to its Triton
kernel (``chip_fast.kernels``) on CUDA. ``perturb`` and ``perturb_means`` make perturbed
activations, ``response_sums`` streams the sufficient statistics, ``prox`` is FISTA's step,
``class_maps`` weights feature maps into maps. The PyTorch path never imports Triton."""
