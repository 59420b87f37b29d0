"""tuner.vram.calibrate, the parts that run without a GPU: calibrating refuses a machine without CUDA (one line),
the synthetic token data the measurement trains on, and the kappa probes (their shapes replay a trial's loss
backward; their bookkeeping, run against a stand-in for the CUDA calls). The measurement itself runs on a GPU
(bench/estimate_validation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.config import Phase1Config
from tuner.units import GIB
from tuner.vram import calibrate as cal_mod
from tuner.vram.calibrate import PROBE_FREE_MARGIN, calibrate_device, kappa_probe_configs, synthetic_token_data
from tuner.vram.calibration import MIN_KAPPA_SAMPLES, CalibrationError
from tuner.vram.estimate.predict import estimate


def test_calibrate_device_needs_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: calibrate_device is exercised by bench/estimate_validation.py")
    with pytest.raises(CalibrationError, match="needs a CUDA GPU"):
        calibrate_device()


@pytest.mark.parametrize("vocab, dtype", [(97, np.uint16), (65535, np.uint16), (70000, np.uint32)])
def test_synthetic_token_data_is_uniform_ids_in_the_vocab(vocab, dtype):
    data = synthetic_token_data(vocab, n_tokens=5000, seed=1)
    assert data.vocab_size == vocab and data.train.dtype == dtype and data.val.dtype == dtype
    assert len(data.train) == len(data.val) == 5000
    assert 0 <= int(data.train.min()) and int(data.train.max()) < vocab
    assert not np.array_equal(data.train, data.val)  # the split is not one array twice
    assert data.corpus_hash == "synthetic-uniform" and data.from_cache is False


def test_synthetic_token_data_is_reproducible_from_its_seed():
    a, b, c = (synthetic_token_data(97, 100, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.train, b.train) and not np.array_equal(a.train, c.train)


# --- kappa probes ------------------------------------------------------------------------------------------------

PROBED_FIELDS = {"batch_size", "n_seq", "dtype", "stability_monitoring_enabled"}


def test_kappa_probes_are_trials_of_the_default_config_in_both_dtype_classes():
    probes = kappa_probe_configs()
    default = Phase1Config().to_dict()
    for cfg in probes:
        d = cfg.to_dict()
        # the model a trial trains (depth, width, vocab, checkpointing, loss chunking): only the load differs
        assert {k: v for k, v in d.items() if k not in PROBED_FIELDS} == {
            k: v for k, v in default.items() if k not in PROBED_FIELDS
        }
        assert cfg.use_gradient_checkpointing and cfg.n_layers == 12
        assert cfg.n_seq // cfg.loss_chunk_size >= 2  # the peak is at a later chunk's backward, as in the trials
    shapes = {dt: sorted((c.batch_size, c.n_seq) for c in probes if c.dtype == dt) for dt in {c.dtype for c in probes}}
    assert set(shapes) == {"bfloat16", "float32"} and shapes["bfloat16"] == shapes["float32"]


@pytest.mark.parametrize("cfg", kappa_probe_configs(), ids=lambda c: f"{c.dtype}-B{c.batch_size}-L{c.n_seq}")
def test_each_kappa_probe_peaks_at_the_ce_backward_so_its_gap_reads_back_as_kappa(cfg):
    e = estimate(cfg, device="cuda")
    assert e.peak_moment == "backward: loss"
    # the CE hole, not the recomputed blocks' hole, sets the segment's high-water mark
    assert e.ce_backward_gib + e.ce_replay_kappa * e.ce_chunk_gib > e.recompute_gib + e.recompute_hole_gib
    # a device whose kappa is the replay's + 0.1: the gap it would show is inverted back to that kappa
    kappa = e.ce_replay_kappa + 0.1
    observed = e.observed_kappa(e.tensor_gib, e.allocator_for(e.tensor_gib, kappa))
    assert observed is not None and abs(observed - kappa) < 2 * 2**21 / GIB / e.ce_chunk_gib  # page rounding


def test_kappa_probes_span_the_trials_ce_chunks_and_enough_fit_a_small_card():
    ests = [estimate(c, device="cuda") for c in kappa_probe_configs()]
    chunks = sorted({round(e.ce_chunk_gib, 2) for e in ests})
    assert chunks[0] < 1.0 < 2.0 < chunks[-1]
    for cls in ("amp", "fp32"):  # an 8 GiB card still seeds each class's offset from MIN_KAPPA_SAMPLES probes
        fit = [e for e in ests if e.allocator_class == cls and PROBE_FREE_MARGIN * (e.tensor_gib + e.allocator_gib) < 8]
        assert len(fit) >= MIN_KAPPA_SAMPLES


class _FakeCuda:
    """Stands in for torch.cuda in _kappa_probes: `free_gib` free, and each run's peaks set from its prediction."""

    def __init__(self, free_gib: float, extra_kappa: float):
        self.free_gib, self.extra_kappa, self.ran = free_gib, extra_kappa, []
        self.alloc = self.res = 0.0

    def train(self, cfg, data, **kw):
        self.ran.append((cfg.dtype, cfg.batch_size, cfg.n_seq))
        e = estimate(cfg, device="cuda")
        self.alloc = e.tensor_gib
        self.res = e.tensor_gib + e.allocator_for(e.tensor_gib, e.ce_replay_kappa + self.extra_kappa)


def test_kappa_probes_record_the_offset_and_skip_what_the_card_cannot_hold(monkeypatch):
    torch = pytest.importorskip("torch")
    import model.train

    fake = _FakeCuda(free_gib=6.0, extra_kappa=0.1)
    monkeypatch.setattr(model.train, "train_and_evaluate", fake.train)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev=None: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (int(fake.free_gib * GIB), int(80 * GIB)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: int(fake.alloc * GIB))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda dev=None: int(fake.res * GIB))
    rows = cal_mod._kappa_probes("cuda:0", workspace_gib=0.0)
    assert len(rows) == len(kappa_probe_configs())
    ran = [r for r in rows if "skipped" not in r]
    skipped = [r for r in rows if "skipped" in r]
    # 6 GiB free: the probes predicted under 6 / PROBE_FREE_MARGIN GiB run, the others are skipped with the reason
    assert ran and skipped and len(fake.ran) == len(ran)
    for r in ran:
        assert r["predicted_reserved_gib"] * PROBE_FREE_MARGIN <= 6.0
        assert r["offset"] == pytest.approx(0.1, abs=2 * 2**21 / GIB / r["ce_chunk_gib"])
    for r in skipped:
        assert r["offset"] is None and "GiB free" in r["skipped"]
