"""`LNSLinear`: an inference-only nn.Linear whose weight is stored as LNS codes, and `convert_to_lns`, which swaps
every nn.Linear of a model for one. The format and the kernel are in `kernels/lns.py`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from kernels.lns import DEFAULT_FRAC_BITS, LNSWeight, lns_encode, lns_matmul, validate_block_sizes
from model.config import Phase1Config

__all__ = ["LNSLinear", "convert_to_lns"]


class LNSLinear(nn.Module):
    """`y [..., N] = x [..., K] @ w^T + b`, w held as LNS codes. Inference only (no parameters, no backward).

    Buffers: `codes` int8/int16 [N, K] (N = out_features, K = in_features), `offsets` int32 [N] (per-channel
    offset in 2^-frac_bits octaves), `bias` float32 [N] or None. Integer buffers survive `.half()` / `.to(dtype)`
    unchanged, so the format cannot be silently degraded by a dtype cast of the model.
    Tiles: `block_m/n/k` are handed to `lns_matmul` on every call: the tiled kernel's real tile sizes for more than
    64 rows; at 64 rows or fewer lns_matmul's auto variant runs a small-M kernel with its measured tiles instead.
    `backend`: "auto" (Triton on CUDA, the torch reference elsewhere), "triton" or "torch".
    Under autocast the input is cast to the autocast dtype first, as nn.Linear's would be.
    """

    # The buffers' types (register_buffer sets them; nn.Module.__getattr__ alone would type them Tensor | Module).
    codes: torch.Tensor
    offsets: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 8,
        block_m: int = 128,
        block_n: int = 128,
        block_k: int = 32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if bits not in DEFAULT_FRAC_BITS:
            raise ValueError(f"bits: {bits!r} is not supported (allowed: 8 or 16)")
        validate_block_sizes(block_m, block_n, block_k)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.frac_bits = bits, DEFAULT_FRAC_BITS[bits]
        self.block_m, self.block_n, self.block_k = block_m, block_n, block_k
        self.backend: Literal["auto", "triton", "torch"] = "auto"
        code_dtype = torch.int8 if bits == 8 else torch.int16
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=code_dtype, device=device))
        self.register_buffer("offsets", torch.zeros(out_features, dtype=torch.int32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: Phase1Config) -> LNSLinear:
        """Encode `linear`'s weight with `config.lns_bits`; tiles `config.lns_block_size_m/n/k`; bias kept fp32."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        if not isinstance(config, Phase1Config):
            raise ValueError(f"config: expected a Phase1Config, got {type(config).__name__}")
        weight = linear.weight.detach()
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits=config.lns_bits,
            block_m=config.lns_block_size_m,
            block_n=config.lns_block_size_n,
            block_k=config.lns_block_size_k,
            device=weight.device,
        )
        layer.load_weight(lns_encode(weight, config.lns_bits))
        if linear.bias is not None:
            assert layer.bias is not None  # built with a bias above
            layer.bias.copy_(linear.bias.detach().to(torch.float32))
        return layer

    def load_weight(self, weight: LNSWeight) -> None:
        """Copy an encoded `[out_features, in_features]` LNSWeight into the buffers."""
        if weight.shape != (self.out_features, self.in_features) or weight.bits != self.bits:
            raise ValueError(
                f"weight: {weight.bits}-bit {weight.shape} does not fit this layer "
                f"({self.bits}-bit {(self.out_features, self.in_features)})"
            )
        self.codes.copy_(weight.codes)
        self.offsets.copy_(weight.offsets)

    def lns_weight(self) -> LNSWeight:
        """The stored weight as an LNSWeight (views of the buffers, no copy)."""
        return LNSWeight(self.codes, self.offsets, self.bits, self.frac_bits)

    def storage_bytes(self) -> int:
        """Bytes of the weight storage: codes (1 or 2 per weight) plus the int32 offsets (4 per output channel).

        The bias (4 bytes per output channel, fp32) is not included: nn.Linear's bias is not compressed either.
        """
        return self.codes.numel() * self.codes.element_size() + self.offsets.numel() * self.offsets.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N] in x's dtype (the autocast dtype under autocast)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: last dimension is {x.shape[-1]} but this LNSLinear has in_features {self.in_features}"
            )
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        y = lns_matmul(
            x.reshape(-1, self.in_features),
            self.lns_weight(),
            self.block_m,
            self.block_n,
            self.block_k,
            backend=self.backend,
            bias=self.bias,
        )
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"bits={self.bits}, frac_bits={self.frac_bits}, "
            f"blocks=({self.block_m}, {self.block_n}, {self.block_k})"
        )


def convert_to_lns(module: nn.Module, config: Phase1Config) -> int:
    """Replace, in place, every nn.Linear inside `module` (recursively) by `LNSLinear.from_linear(..., config)`.

    Returns how many were replaced. Settings come from `config` only: `lns_bits`, `lns_block_size_m/n/k`.
    The result is inference-only: run it under `torch.no_grad()` / `torch.inference_mode()`.
    `module` itself cannot be an nn.Linear (there is no parent to swap it in): use `LNSLinear.from_linear`.
    """
    if not isinstance(config, Phase1Config):
        raise ValueError(f"config: expected a Phase1Config, got {type(config).__name__}")
    if isinstance(module, nn.Linear):
        raise ValueError(
            "module: is itself an nn.Linear, which cannot be replaced in place; "
            "use LNSLinear.from_linear(module, config)"
        )
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LNSLinear.from_linear(child, config))
            count += 1
        else:
            count += convert_to_lns(child, config)
    return count
