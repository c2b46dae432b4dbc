"""frankeneval.model_wrappers (installed from the repo's model_wrappers/ folder)."""
