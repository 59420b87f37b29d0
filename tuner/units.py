"""Units shared by the whole tuner: memory is GiB (2^30 bytes) everywhere (flags, YAML keys, attributes: `*_gib`).

Defined once in model/units.py (torch-free, so the estimator and the CLI stay torch-free); re-exported here so that
tuner modules import their units from inside tuner/."""

from model.units import GIB as GIB
from model.units import MIB as MIB
