"""What every layer stands on, and imports nothing else of frankeneval: where things live on disk (``paths``), results
written atomically and read back (``results``), resumable run stores (``runstore``), output locks and child processes
(``locks``), YAML reading (``yamlio``), benchmark data and probe pairs (``data``, ``probes``), input checks before
any model work (``inputs_check``), system prompts (``prompts``), answer checks (``scoring``) and the LLM judge
(``grading``). The generation engine is :mod:`frankeneval.engine`; checkpoints and weights are
:mod:`frankeneval.weights`."""
