"""Predict a trial's peak GPU memory from its config alone (pure arithmetic: the caller loads the calibration)."""

from tuner.vram.estimate.predict import Estimate, estimate

__all__ = ["Estimate", "estimate"]
