"""Training: arguments and presets, the trainer, losses, learning-rate schedules, cross-process pieces, checkpoints and run records."""
