"""Units shared by the whole tuner: memory is GiB (2^30 bytes) everywhere (flags, YAML keys, attributes: `*_gib`).

torch-free on purpose (model.memory has the model's own copy and imports torch; the estimator must not)."""

GIB = float(2**30)  # bytes per GiB
MIB = 2**20  # bytes per MiB
