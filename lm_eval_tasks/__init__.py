"""frankeneval.lm_eval_tasks (installed from the repo's lm_eval_tasks/ folder): the lm-eval tasks.

Kept apart from ``tasks/`` (the lmms-eval tasks) because each harness indexes every YAML under its include path and
both name their tasks ``franken_gsm8k`` / ``franken_math500``. ``frankeneval-lm-eval`` adds this folder itself.
"""
