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


# --- many tensors at once (the foreach path) ----------------------------------------------------


def _flat_bits(keys: list[int], sizes: list[int], device: torch.device) -> Tensor:
    """``keyed_hash(keys[i], j)`` for ``j < sizes[i]``, for every ``i``, concatenated: one hash over all
    tensors (an int64 key per element) instead of a dozen small ops per tensor."""
    counts = torch.tensor(sizes, dtype=torch.int64, device=device)
    starts = torch.cumsum(counts, 0) - counts
    index = torch.arange(sum(sizes), dtype=torch.int64, device=device)
    index = index - torch.repeat_interleave(starts, counts, output_size=index.numel())
    key = torch.repeat_interleave(torch.tensor(keys, dtype=torch.int64, device=device), counts,
                                  output_size=index.numel())
    return lion_core.keyed_hash(key, index)


def _padded_sizes(tensors: list[Tensor]) -> list[int]:
    block = lion_core.INT8.block_size
    return [lion_core.INT8.blocks(t.numel()) * block for t in tensors]


def _padded(tensors: list[Tensor], padded: list[int], dtype: torch.dtype) -> Tensor:
    """The flattened ``tensors`` in ``dtype``, each followed by zeros up to ``padded`` elements."""
    pieces = []
    for t, size in zip(tensors, padded):
        pieces.append(t.reshape(-1).to(dtype))
        if size > t.numel():
            pieces.append(torch.zeros(size - t.numel(), dtype=dtype, device=t.device))
    return torch.cat(pieces)


def decode_all(codes: list[Tensor], scales: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """``decode`` of many int8 momenta at once (one device): each block is decoded as
    ``lion_core.INT8.decode`` decodes it, so the values are the same bits."""
    padded = _padded_sizes(codes)
    values = lion_core.INT8.decode(_padded(codes, padded, torch.int8), torch.cat(scales), xp=xp)
    if dtype != torch.float32:
        values = values.to(dtype)
    return [v[: c.numel()].view(c.shape) for v, c in zip(values.split(padded), codes)]


def store_momenta(codes: list[Tensor], scales: list[Tensor], values: list[Tensor], keys: list[int]) -> None:
    """``store_momentum`` of many int8 momenta at once (one device, one dtype of ``values``): the
    blocks of every tensor, each zero-padded to whole blocks as ``lion_core.INT8`` pads a tensor's
    last block, are encoded in one call, with every element's own bits."""
    padded = _padded_sizes(values)
    flat = _padded(values, padded, values[0].dtype)
    new_codes, new_scales = lion_core.INT8.encode(flat, _flat_bits(keys, padded, flat.device), xp=xp)
    pieces = new_codes.split(padded)
    torch._foreach_copy_(codes, [c[: t.numel()].view(t.shape) for c, t in zip(pieces, codes)])
    torch._foreach_copy_(scales, list(new_scales.split([s.numel() for s in scales])))


def store_params(params: list[Tensor], values: list[Tensor], keys: list[int]) -> None:
    """``store_param`` of many bfloat16 parameters at once (one device)."""
    sizes = [p.numel() for p in params]
    flat = torch.cat([v.reshape(-1).to(torch.float32) for v in values])
    bits = flat.view(torch.int32).to(torch.int64) & _MASK32
    random = _flat_bits(keys, sizes, flat.device)
    rounded = lion_core.stochastic_round_bfloat16_bits(bits, random, xp=torch) >> 16
    stored = (rounded - ((rounded >> 15) << 16)).to(torch.int16).view(torch.bfloat16)
    torch._foreach_copy_(params, [s.view(p.shape) for s, p in zip(stored.split(sizes), params)])
