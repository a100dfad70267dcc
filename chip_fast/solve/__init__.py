"""From streamed sums to weights: the mask moments and covariances (``stats``), the batched
Lasso (``lasso``, FISTA on the ``prox`` op), and the fits of a job, a refit and held-out checks
(``fit``)."""
