"""VRAM: the in-run guard, NVML, the per-device calibration store, measuring a GPU, and the pure estimator."""
