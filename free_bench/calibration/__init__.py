"""Thresholds with a statistical guarantee: Learn-then-Test over an exit method's thresholds."""

from free_bench.calibration.ltt import Certificate, certify, hb_p_value, ltt_threshold

__all__ = ["Certificate", "certify", "hb_p_value", "ltt_threshold"]
