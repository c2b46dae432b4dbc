"""Analysis 3, transferability: merge specs (``mergespec``) and built-in recipes (``recipes``), materialized
Frankenstein checkpoints (``splice``) and the lmms-eval transfer matrix over them (``transfer``)."""
