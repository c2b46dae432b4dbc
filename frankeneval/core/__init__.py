"""The small core every analysis stands on: the layer map and its layer grammar (``layermap``), checkpoint I/O
(``checkpoint``: one door to the bytes on disk), generation with interventions (``generation``,
``interventions``), results on disk (``runstore``), benchmark data (``data``, ``probes``), answer checks
(``scoring``) and the LLM judge (``grading``)."""
