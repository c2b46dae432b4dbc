"""Checkpoints and their weights: opening a checkpoint (``checkpoint``: one door to the bytes on disk), the safetensors
file format (``safetensors_file``), tensor streaming (``tensor_stream``), content fingerprints (``fingerprint``) and
the layer map with its layer grammar (``layermap``), driven by one declarative description per architecture family
(``architecture``, ``architectures/<family>.json``). Imports only :mod:`frankeneval.core`."""
