"""The evaluation protocol every analysis and task shares: benchmark data and its checks (``data``,
``inputs_check``), the vision probes (``probes``), the system prompts (``prompts``), the rule-based answer checks
(``scoring``) and the LLM judge (``grading``). Benchmark-specific rules live with their benchmark (``tasks/``)."""
