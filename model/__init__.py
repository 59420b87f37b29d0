"""The Phase 1 language model: config, components, training and data.

`Phase1Config` and `PRESETS` import without torch (the CLI validates files with them); everything
else is imported on first use.
"""

from model.config import PRESETS, ConfigError, Phase1Config

__all__ = ["ConfigError", "PRESETS", "Phase1Config", "build_model"]


def __getattr__(name: str):
    if name == "build_model":
        from model.lm import build_model

        return build_model
    raise AttributeError(f"module 'model' has no attribute {name!r}")
