"""Analyses: pure functions of the results tables (`compute_*(df) -> df`), no torch import."""
