"""Phase1Config: validation messages name field, value and range; YAML round trip; presets = guide section 6."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from model.config import PRESETS, ConfigError, Phase1Config


def _guide_path() -> Path:
    """The tuning guide (shared/seeds/000_*.txt), found beside the repository or inside it."""
    for base in Path(__file__).resolve().parents:
        hits = sorted((base / "shared" / "seeds").glob("000_*.txt"))
        if hits:
            return hits[0]
    pytest.skip("tuning guide shared/seeds/000_*.txt not found next to this checkout")


def _guide_presets() -> dict[str, dict]:
    """Section 6 of the guide: preset name -> the keyword arguments of its Phase1Config(...) example."""
    text = _guide_path().read_text(encoding="utf-8")
    section = text.split("## 6.", 1)[1].split("## 7.", 1)[0]
    names = {"6.1": "8gb", "6.2": "10gb", "6.3": "24gb", "6.4": "inference"}
    out = {}
    for sub in re.split(r"\n### ", section)[1:]:
        number = sub.split()[0]
        code = re.search(r"```python\n(.*?)```", sub, re.S).group(1)
        call = ast.parse(code).body[0].value
        assert isinstance(call, ast.Call) and call.func.id == "Phase1Config"
        out[names[number]] = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    return out


def test_presets_equal_guide_section_6():
    guide = _guide_presets()
    assert set(guide) == set(PRESETS) == {"8gb", "10gb", "24gb", "inference"}
    for name, kwargs in guide.items():
        assert len(kwargs) >= 9, f"{name}: parsed too few fields from the guide: {kwargs}"
        preset = PRESETS[name]
        for key, value in kwargs.items():
            assert getattr(preset, key) == value, f"preset {name}.{key}: {getattr(preset, key)!r} != guide {value!r}"
        # Fields the guide does not name take the defaults.
        assert preset == Phase1Config(**kwargs), f"preset {name} differs from the guide outside its named fields"


@pytest.mark.parametrize("cfg", [Phase1Config(), Phase1Config(ar_ssm_gate_hidden_dim=77, head="low_rank",
                                                                    stability_action="warn", dtype="float16"),
                                 *PRESETS.values()], ids=["default", "custom", *PRESETS])
def test_yaml_round_trip(cfg):
    text = cfg.to_yaml()
    back = Phase1Config.from_yaml(text)
    assert back == cfg
    assert back.to_yaml() == text


def test_yaml_int_for_float_field_and_unknown_key():
    cfg = Phase1Config.from_yaml("schatten_s1_bound: 80\n")
    assert cfg.schatten_s1_bound == 80.0 and isinstance(cfg.schatten_s1_bound, float)
    with pytest.raises(ConfigError, match=r"htt_rnk: unknown Phase1Config field \(did you mean 'htt_rank'\?\)"):
        Phase1Config.from_yaml("htt_rnk: 8\n")


# (changes, field named in the message, value shown, allowed range shown)
_BAD = [
    (dict(ar_ssm_min_rank=9, ar_ssm_max_rank=8), "ar_ssm_min_rank", "9", "1 .. ar_ssm_max_rank = 8"),
    (dict(ar_ssm_max_rank=0, ar_ssm_min_rank=0), "ar_ssm_max_rank", "0", ">= 1"),
    (dict(ar_ssm_min_rank=0), "ar_ssm_min_rank", "0", ">= 1"),
    (dict(htt_num_cores=4), "htt_num_cores", "4", "2 or 3"),
    (dict(htt_rank=0), "htt_rank", "0", ">= 1"),
    (dict(ffn_rank=0), "ffn_rank", "0", ">= 1"),
    (dict(ffn_rank=129, d_model=32), "ffn_rank", "129", "4 * d_model = 128"),
    (dict(ar_ssm_gate_hidden_dim=0), "ar_ssm_gate_hidden_dim", "0", ">= 1"),
    (dict(schatten_s1_bound=0.0), "schatten_s1_bound", "0.0", "> 0"),
    (dict(schatten_s2_bound=-1.0), "schatten_s2_bound", "-1.0", "> 0"),
    (dict(gradient_norm_threshold=0.0), "gradient_norm_threshold", "0.0", "> 0"),
    (dict(stability_threshold=0.0), "stability_threshold", "0.0", "> 0"),
    (dict(stability_threshold=1.5), "stability_threshold", "1.5", "0 < x < 1"),
    (dict(lns_block_size_m=48), "lns_block_size_m", "48", "power of two from 16 to 256"),
    (dict(d_model=4), "d_model", "4", ">= 8"),
    (dict(vocab_size=1), "vocab_size", "1", ">= 2"),
    (dict(loss_chunk_size=-1), "loss_chunk_size", "-1", ">= 0"),
    (dict(head="dense"), "head", "'dense'", "one of 'tied', 'low_rank'"),
    (dict(htt_rank=2.5), "htt_rank", "2.5", "an integer"),
    (dict(ar_ssm_l1_regularization=float("nan")), "ar_ssm_l1_regularization", "nan", "finite"),
]


@pytest.mark.parametrize("changes,name,value,allowed", _BAD, ids=[b[1] + "-" + b[2] for b in _BAD])
def test_validation_message_names_field_value_and_range(changes, name, value, allowed):
    with pytest.raises(ConfigError) as err:
        Phase1Config(**changes)
    msg = str(err.value)
    assert msg.startswith(name + ":"), msg
    assert value in msg and allowed in msg, msg


def test_lns_with_training_is_rejected():
    cfg = PRESETS["inference"]
    with pytest.raises(ConfigError, match=r"lns_enabled: True cannot be trained"):
        cfg.check_trainable()
    PRESETS["10gb"].check_trainable()  # a trainable config passes


def test_gate_hidden_dim_default_is_quarter_of_d_model():
    assert Phase1Config(d_model=64).gate_hidden_dim == 16
    assert Phase1Config(d_model=64, ar_ssm_gate_hidden_dim=40).gate_hidden_dim == 40
