"""Storage: URLs, opening a database (resilient to outages), studies, samplers, constraints.

Optuna's private names are used only in _optuna_compat."""
