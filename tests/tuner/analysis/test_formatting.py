"""tuner.analysis.formatting: params to 4 significant figures, memory under 1 GiB in MiB."""

from __future__ import annotations

from tuner.analysis.formatting import mem_text, params_text, sig4


def test_sig4_rounds_floats_only():
    assert sig4(0.0031234567) == "0.003123" and sig4(123456.789) == "1.235e+05" and sig4(2.0) == "2"
    assert sig4(24) == "24" and sig4(True) == "True" and sig4("tied") == "tied"
    assert params_text({"lr": 0.00201999, "rank": 8, "ckpt": False}) == "lr=0.00202, rank=8, ckpt=False"


def test_mem_text_switches_to_mib_under_one_gib():
    assert mem_text(2.406) == "2.406 GiB" and mem_text(1.0) == "1.000 GiB"
    assert mem_text(0.8125) == "832 MiB" and mem_text(0.034) == "34.8 MiB" and mem_text(0.0) == "0 MiB"
    assert mem_text(None) == "n/a"
