"""frankeneval.tasks (installed from the repo's tasks/ folder)."""
