"""Labeling campaigns: the workdir and its lock, rounds, labels in and out, retraining."""
