"""Memory units of the whole project: memory is GiB (2^30 bytes) everywhere (flags, YAML keys, attributes: `*_gib`).

The one home of GIB and MIB: model.memory and model.train read them here, tuner/units.py re-exports them. torch-free
on purpose, so the tuner's torch-free modules (the estimator, the CLI) can import it.
"""

GIB = 2**30  # bytes per GiB
MIB = 2**20  # bytes per MiB
