"""Storage: URLs, opening a database (resilient to outages), studies, samplers, constraints; Optuna internals only in _optuna_compat."""
