"""Stage 1, distillation: the settings and plan of a job (``settings``, ``plan``), the hot loop
(``runner``, ``tails``), the streamed sums and their checkpoints (``state``, ``checkpoint``),
the mechanics between torchrun ranks (``distributed``) and the job itself (``job``), whose
``distill_all_classes`` is the one entry point."""
