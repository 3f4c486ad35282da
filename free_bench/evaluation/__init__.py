"""Evaluation: backbone quality, per-exit tables, threshold sweeps (simulated and live), metrics, regressions."""
