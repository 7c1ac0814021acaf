"""The one training loop and what it writes: run folders, checkpoints, logs, reports."""
