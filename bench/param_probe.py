"""Parametrization probe: train small Phase 1 models on the stdlib corpus under variants of the optimizer groups and
the output bias, against the unigram baseline on the same tokens. Writes bench/results/param_probe.json.

    PYTHONPATH=$PWD python3 bench/param_probe.py --d-model 128 --variants shipped,chosen --lrs 1e-3
    PYTHONPATH=$PWD python3 bench/param_probe.py --list

Every run is the real `model.train.train_and_evaluate` (same batches, schedule, clipping, stability monitor); a
variant only swaps `model.optim.lr_multipliers`, what `Phase1LM.init_output_bias` does and (one variant) which kinds
get weight decay, for that run. Unigram
baseline: add-one-smoothed token frequencies of the training split, scored on exactly the validation targets the
model is scored on (the first ceil(eval_tokens / L) windows). Numbers are nats per token; ppl = exp(nats).
Results are appended per run (keyed by variant, lr, width, layers, tokens), so runs can be split across calls.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# the repo root first: `python bench/param_probe.py` puts bench/ on sys.path, where bench/kernels.py would shadow
# the `kernels` package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import lm, optim
from model.config import Phase1Config
from model.data import DataSource, prepare_data
from model.lm import Phase1LM, unigram_counts
from model.train import train_and_evaluate

RESULTS = Path(__file__).parent / "results" / "param_probe.json"
ALL_ONE = {k: 1.0 for k in optim.KINDS}
_CHOSEN = optim.lr_multipliers  # the shipped rule (variants patch optim.lr_multipliers while they run)


def _mult(emb, phase=None, bias=1.0):
    """A multiplier rule: emb/phase given as functions of D."""
    def rule(d_model: int) -> dict[str, float]:
        m = dict(ALL_ONE)
        m["embedding"] = emb(d_model)
        m["phase"] = (phase or emb)(d_model)
        m["bias"] = bias
        return m
    return rule


def _one(d):
    return 1.0


def _sqrt(d):
    return math.sqrt(d)


def _lin(d):
    return float(d)


def _quarter(d):
    return d ** 0.25


def _four(d):
    return 4.0 * d


def _fourth(d):
    return d / 4.0


# name -> (lr multiplier rule, output bias: "off" (frozen at 0), "zero" (trained from 0), "unigram" (trained from
# the log unigram frequencies))
VARIANTS = {
    "shipped": (_mult(_one), "off"),
    "emb_sqrtD": (_mult(_sqrt), "off"),
    "bias_zero": (_mult(_one), "zero"),
    "bias_unigram": (_mult(_one), "unigram"),
    "emb_sqrtD_bias_zero": (_mult(_sqrt), "zero"),
    "chosen": (_CHOSEN, "unigram"),  # what model.optim and model.train ship
    "emb_sqrtD_bias_unigram": (_mult(_sqrt), "unigram"),
    "emb_D_bias_unigram": (_mult(_lin), "unigram"),
    "emb_D4_bias_unigram": (_mult(_quarter), "unigram"),
    "emb_sqrtD_phase1_bias_unigram": (_mult(_sqrt, _one), "unigram"),
    "emb_sqrtD_bias_zero_x30": (_mult(_sqrt, bias=30.0), "zero"),
    "emb_D": (_mult(_lin), "off"),
    "emb_D_bias_zero": (_mult(_lin), "zero"),
    "emb_4D_bias_unigram": (_mult(_four), "unigram"),
    "emb_D_phase1_bias_unigram": (_mult(_lin, _one), "unigram"),
    "emb_D/4_bias_unigram": (_mult(_fourth), "unigram"),
    "emb_D_bias_unigram_x10": (_mult(_lin, bias=10.0), "unigram"),
    "chosen_no_core_wd": (_CHOSEN, "unigram", frozenset({"matrix"})),  # cores without weight decay
    "chosen_head_1/D": (_CHOSEN, "unigram"),  # tied head reads the table at 1/D instead of 1/sqrt(D)
    "chosen_phase_at_emb_rate": (_mult(lambda d: _CHOSEN(d)["embedding"]), "unigram"),
}
HEAD_SCALE = {"chosen_head_1/D": lambda d: 1.0 / d}  # variant -> tied-head scale as a function of D


def unigram_val_nats(train: np.ndarray, val: np.ndarray, vocab_size: int, n_seq: int, eval_tokens: int) -> float:
    counts = unigram_counts(train, vocab_size).numpy() + 1.0
    logp = np.log(counts / counts.sum())
    n_windows = min(math.ceil(eval_tokens / n_seq), (len(val) - 1) // n_seq)
    targets = np.concatenate([np.asarray(val[k * n_seq + 1: k * n_seq + n_seq + 1]) for k in range(n_windows)])
    return float(-logp[targets.astype(np.int64)].mean())


def run_variant(name: str, config: Phase1Config, data, train_tokens: int, eval_tokens: int) -> dict:
    rule, bias, *decayed = VARIANTS[name]
    orig_mult, orig_init, orig_decayed = optim.lr_multipliers, Phase1LM.init_output_bias, optim._DECAYED

    def init_bias(self, counts):
        if bias == "unigram":
            orig_init(self, counts)
        elif bias == "off":
            self.out_bias.requires_grad_(False)  # param_groups skips it: the bias stays 0

    optim.lr_multipliers, Phase1LM.init_output_bias = rule, init_bias
    orig_build = lm.build_model
    if name in HEAD_SCALE:
        def build(cfg):
            model = orig_build(cfg)
            model.head_scale = HEAD_SCALE[name](cfg.d_model)
            return model
        lm.build_model = build
    optim._DECAYED = decayed[0] if decayed else orig_decayed
    try:
        t0 = time.perf_counter()
        r = train_and_evaluate(config, data, train_tokens=train_tokens, eval_tokens=eval_tokens, device="cpu")
    finally:
        optim.lr_multipliers, Phase1LM.init_output_bias, optim._DECAYED = orig_mult, orig_init, orig_decayed
        lm.build_model = orig_build
    return {"variant": name, "lr": config.learning_rate, "d_model": config.d_model, "n_layers": config.n_layers,
            "val_loss": r.val_loss, "val_ppl": r.val_ppl, "train_tokens": r.train_tokens,
            "gate_sparsity": r.diagnostics.get("gate_sparsity"), "effective_rank": r.diagnostics.get("effective_rank"),
            "train_loss_first": r.diagnostics.get("train_loss_first"), "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="shipped,chosen")
    ap.add_argument("--lrs", default="1e-3")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--train-tokens", type=int, default=300_000)
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--max-bytes", type=int, default=4 << 20)
    ap.add_argument("--n-seq", type=int, default=128)
    ap.add_argument("--head", choices=("tied", "low_rank"), default="tied")
    ap.add_argument("--head-rank", type=int, default=32)
    ap.add_argument("--l1", type=float, default=1e-3)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(VARIANTS))
        return 0
    torch.set_num_threads(1)
    data = prepare_data(DataSource(kind="stdlib", max_bytes=args.max_bytes), args.vocab,
                        os.environ.get("PHASE1_CACHE", ".phase1_cache"))
    base = Phase1Config(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, n_seq=args.n_seq,
                        batch_size=8, dtype="float32", loss_chunk_size=0, ffn_rank=max(8, args.d_model // 8),
                        ar_ssm_max_rank=16, ar_ssm_min_rank=2, htt_rank=8, ar_ssm_l1_regularization=args.l1,
                        use_gradient_checkpointing=False, seed=0,
                        head=args.head, head_rank=args.head_rank)
    uni = unigram_val_nats(data.train, data.val, args.vocab, base.n_seq, args.eval_tokens)
    print(f"unigram: {uni:.4f} nats (ppl {math.exp(uni):.1f}), {data.n_train_tokens} train tokens", flush=True)
    for lr in (float(x) for x in args.lrs.split(",")):
        for name in args.variants.split(","):
            res = run_variant(name, base.replace(learning_rate=lr), data, args.train_tokens, args.eval_tokens)
            res.update(requested_train_tokens=args.train_tokens, unigram_val_loss=uni, vocab_size=args.vocab,
                       l1=args.l1, corpus_tokens=data.n_train_tokens, max_bytes=args.max_bytes, n_seq=args.n_seq,
                       eval_tokens=args.eval_tokens, head=args.head,
                       head_rank=args.head_rank if args.head == "low_rank" else None)
            print(json.dumps(res), flush=True)
            _record(res)
    return 0


def _record(res: dict) -> None:
    """Add `res` to RESULTS, replacing an earlier run of the same settings; locked, so probes may run in parallel."""
    keys = ("variant", "lr", "d_model", "n_layers", "requested_train_tokens", "vocab_size", "l1", "max_bytes", "n_seq",
            "eval_tokens", "head", "head_rank")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(tempfile.gettempdir(), "param_probe.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
        out["runs"] = [x for x in out["runs"] if any(x.get(k) != res[k] for k in keys)] + [res]
        RESULTS.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
