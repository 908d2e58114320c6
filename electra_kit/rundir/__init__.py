"""A run on disk: its directory, atomic writes, checkpoints, resume."""
