"""lion_core's state formats on torch tensors: 8-bit blockwise momentum and stochastic bfloat16 rounding.

The arithmetic is ``lion_core``'s (``lion_core.INT8.encode``/``decode``, ``keyed_hash``,
``stochastic_round_bfloat16_bits``), run on torch through a small array namespace, so the codes,
scales and rounded parameters are bit-identical to ``lion_core.reference``'s. torch has no uint32
arithmetic: the hash runs on int64 tensors masked to 32 bits, as ``lion_core`` documents.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import lion_core

_MASK32 = 0xFFFFFFFF


class _TorchNamespace:
    """The array-API names ``lion_core``'s formats call, on torch (``max`` reduces, ``astype`` casts)."""

    int8 = torch.int8
    float32 = torch.float32
    abs = staticmethod(torch.abs)
    floor = staticmethod(torch.floor)
    round = staticmethod(torch.round)
    clip = staticmethod(torch.clip)
    where = staticmethod(torch.where)
    reshape = staticmethod(torch.reshape)
    concatenate = staticmethod(torch.cat)
    zeros = staticmethod(torch.zeros)

    @staticmethod
    def max(x: Tensor, axis: int) -> Tensor:
        return torch.amax(x, dim=axis)

    @staticmethod
    def astype(x: Tensor, dtype: torch.dtype) -> Tensor:
        return x.to(dtype)

    @staticmethod
    def asarray(x: Any) -> Tensor:
        return torch.as_tensor(x)


xp = _TorchNamespace()


def random_bits(key: int, like: Tensor) -> Tensor:
    """``lion_core.keyed_hash(key, flat index)`` for every element of ``like``, as int64 (< 2**32)."""
    index = torch.arange(like.numel(), dtype=torch.int64, device=like.device).view(like.shape)
    return lion_core.keyed_hash(key, index)


def decode(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    """An int8 momentum's value, ``codes * scale`` in float32 (``lion_core.INT8.decode``), in ``dtype``."""
    value = lion_core.INT8.decode(codes, scales, xp=xp)
    return value if dtype == torch.float32 else value.to(dtype)


def store_momentum(codes: Tensor, scales: Tensor, value: Tensor, key: int) -> None:
    """Encodes ``value`` into ``codes`` and ``scales`` in place, with the stochastic codes of ``key``."""
    new_codes, new_scales = lion_core.INT8.encode(value, random_bits(key, value), xp=xp)
    codes.copy_(new_codes)
    scales.copy_(new_scales)


def store_param(param: Tensor, value: Tensor, key: int) -> None:
    """Stores the float32 ``value`` into the bfloat16 ``param`` by stochastic rounding with ``key``'s
    bits (``lion_core.stochastic_round_bfloat16_bits``); a wider ``value`` is first rounded to float32."""
    value = value.to(torch.float32)
    bits = value.view(torch.int32).to(torch.int64) & _MASK32
    rounded = lion_core.stochastic_round_bfloat16_bits(bits, random_bits(key, value), xp=torch) >> 16
    # the high half as a signed 16-bit pattern, then reinterpreted as bfloat16
    param.copy_((rounded - ((rounded >> 15) << 16)).to(torch.int16).view(torch.bfloat16))
