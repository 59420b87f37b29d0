"""phase1-tuner: the service that searches Phase 1 model settings under a VRAM ceiling."""

__version__ = "0.1.0"
