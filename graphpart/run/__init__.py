"""A training run: config, data, checkpoints and run directories, the loop, reports."""
