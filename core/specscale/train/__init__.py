"""One training run (train) and its DDP helpers (distributed)."""
