"""Training: the loop (`loop.py`, read top to bottom), optimiser and schedule, weight averaging, checkpoints,
devices and processes."""
