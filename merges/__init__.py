"""frankeneval.merges (installed from the repo's merges/ folder)."""
