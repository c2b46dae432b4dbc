"""Analysis 1, functional localization: the visual-token K/V swap sweep (``vision``), the layer-ablation sweep
(``reasoning``) and attention to visual tokens per layer (``attention``), over shared sweep machinery
(``common``)."""
