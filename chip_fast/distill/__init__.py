"""Stage 1, distillation: what a job computes and how it runs (``settings``), the model and data
resolved once (``inputs``), the plan of units and views (``plan``, ``memory``), the hot loop
(``runner`` over ``rows``, ``views`` and ``tails``), the streamed sums and their checkpoints
(``state``, ``checkpoint``), the mechanics between torchrun ranks (``distributed``), the job
(``job``) and its result (``result``), and ``run``, whose ``distill_all_classes`` is the one
entry point."""
