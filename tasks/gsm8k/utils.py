"""lmms-eval hooks of this task folder (the shared implementation is frankeneval.tasks.common)."""

from frankeneval.tasks.common import (  # noqa: F401
    FrankenTask,
    count,
    gsm8k_doc_to_text,
    gsm8k_process_results,
    math500_doc_to_text,
    math500_process_results,
    mathvista_doc_to_text,
    mathvista_doc_to_visual,
    mathvista_process_results,
    mean_score,
    probe_doc_to_text,
    probe_doc_to_visual,
    probe_process_results,
)
