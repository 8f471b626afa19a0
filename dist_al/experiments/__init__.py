"""Experiments: simulated learning curves, the strategy comparison report, plots, data sets, the demo."""
