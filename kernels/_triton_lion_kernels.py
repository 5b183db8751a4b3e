r"""The Triton kernel behind ``lion_kernels.triton_lion``: the public launcher is ``triton_lion.lion_``.

This module imports Triton at the top; ``triton_lion`` loads it only when a kernel is launched, once
compiled for CUDA tensors and once under the Triton interpreter for CPU tensors, so the same source
runs in both (see ``triton_lion._kernel_module``).

One launch updates every tensor of a group (one device and one (param, grad, momentum) dtype
combination). Program ``pid`` updates chunk ``pid`` of the group: ``CHUNK`` consecutive elements of one
tensor, found through the group's tables (all int64, built and cached by the launcher):

* ``addresses[3, T]``: the data pointers of the parameters, gradients and momenta;
* ``layout[T + 2C]``: each tensor's element count, then for each chunk its tensor and its index
  within that tensor.

Per element, in float32 and in ``lion_core``'s operation order (``lion_core/_rule.py``):

.. math::

    g &\leftarrow g / s \ \text{(GradScaler scale } s\text{)}, \quad g \leftarrow -g \ \text{(maximize)} \\
    c &= \beta_1 m + (1 - \beta_1) g \\
    u &= \operatorname{sign}(c) \ \text{(NaN where } c \text{ is NaN or } \pm\infty) \\
    u &\leftarrow u \, [u g > 0] \, n / n_\text{kept} \ \text{(cautious, per tensor, } n_\text{kept} > 0) \\
    p &\leftarrow p \, d - \eta u, \quad d = 1 - \eta\lambda \ \text{or} \ 1 - \lambda \eta / \eta_{max} \\
    m &\leftarrow \beta_2 m + (1 - \beta_2) g

Each product and sum is rounded to float32 on its own, as NumPy rounds the reference: the launcher
compiles with ``enable_fp_fusion=False`` (no contraction into FMA) and divisions use ``div_rn``
(Triton's ``/`` is the approximate ``div.full.f32`` on NVIDIA GPUs). Conversions between bfloat16
and float32 are written with integer operations, round to nearest even, because the Triton
interpreter truncates in ``.to(tl.bfloat16)`` where the GPU rounds.

Only builtins of ``triton.language`` and this module's own ``@triton.jit`` functions are called: the
``@jit`` functions of Triton's standard library (``tl.sum``, ``tl.zeros``, ...) are decorated when
Triton is imported, as interpreted functions if ``TRITON_INTERPRET=1`` is set then, and a compiled
kernel that calls one fails to build (``tl.standard._sum_combine`` is only named, for the
interpreter, never called).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Storage kinds, as ``lion_kernels._contract.DTYPE_CODE`` numbers them.
F32: tl.constexpr = tl.constexpr(0)
BF16: tl.constexpr = tl.constexpr(1)
F16: tl.constexpr = tl.constexpr(2)


@triton.jit
def _typed(address, KIND: tl.constexpr):
    # bfloat16 is moved as its 16 bits: see _load_f32 / _store_f32. (Not a constexpr_function:
    # those behave differently when TRITON_INTERPRET=1 is set while the compiled copy is built.)
    if KIND == BF16:
        return address.to(tl.pointer_type(tl.uint16))
    elif KIND == F16:
        return address.to(tl.pointer_type(tl.float16))
    else:
        return address.to(tl.pointer_type(tl.float32))


@triton.jit
def _load_f32(ptr, offsets, mask, KIND: tl.constexpr, MASKED: tl.constexpr):
    """Loads a block and widens it to float32 (exactly)."""
    # Unmasked full blocks let the compiler issue 16-byte vector accesses; only the tail is masked.
    if MASKED:
        x = tl.load(ptr + offsets, mask=mask, other=0)
    else:
        x = tl.load(ptr + offsets)
    if KIND == BF16:
        # A bfloat16 is the high half of the float32 with the same value.
        return (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif KIND == F16:
        return x.to(tl.float32)
    else:
        return x


@triton.jit
def _store_f32(ptr, offsets, x, mask, KIND: tl.constexpr, MASKED: tl.constexpr):
    """Rounds a float32 block to the storage dtype, to nearest even, and stores it."""
    if KIND == BF16:
        # Overflow rounds to +-inf; every NaN is stored as torch stores it, the quiet NaN 0x7FC0 (as
        # the CPU kernel does).
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
        value = tl.where(is_nan, rounded * 0 + 0x7FC0, rounded).to(tl.uint16)
    elif KIND == F16:
        value = x.to(tl.float16)
    else:
        value = x
    if MASKED:
        tl.store(ptr + offsets, value, mask=mask)
    else:
        tl.store(ptr + offsets, value)


@triton.jit
def _add(a, b):
    return a + b


if triton.knobs.runtime.interpret:
    # The interpreter sums with NumPy only for the standard library's combine function (it checks
    # its identity, never calls it); with ours it would call it once per element, in Python.
    _add = tl.standard._sum_combine  # noqa: F811


@triton.jit
def _block(
    p_ptr,
    g_ptr,
    m_ptr,
    offsets,
    mask,
    lr,
    decay,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    grad_scale,
    kept_fraction,
    P_KIND: tl.constexpr,
    G_KIND: tl.constexpr,
    M_KIND: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    COUNT_ONLY: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One block of one tensor; returns how many of its entries the cautious mask keeps."""
    g = _load_f32(g_ptr, offsets, mask, G_KIND, MASKED)
    m = _load_f32(m_ptr, offsets, mask, M_KIND, MASKED)
    if HAS_GRAD_SCALE:
        g = tl.math.div_rn(g, grad_scale)  # unscale, as torch's fused Adam: grad / scale
    if MAXIMIZE:
        g = -g
    # lion_core.lion_direction: c = beta1 * m + (1 - beta1) * g and lion_core.sign_with_nan:
    # u = sign(c) + (c - c), NaN where c is NaN or infinite (no fast-math flag lets LLVM fold c - c).
    c = beta1 * m + one_minus_beta1 * g
    u = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0)) + (c - c)
    # lion_core.cautious_mask: keep u where u * g > 0; NaN entries are not kept and stay NaN.
    agree = u * g > 0
    if COUNT_ONLY:
        # Masked-off lanes load g = 0, so they never agree.
        return tl.reduce(agree.to(tl.int32), 0, _add)
    else:
        if CAUTIOUS:
            u = tl.math.div_rn(u * tl.where(agree, u * u, 0.0), kept_fraction)
        p = _load_f32(p_ptr, offsets, mask, P_KIND, MASKED)
        # lion_core.lion_step: p * decay_factor - lr * u; lion_core.next_momentum
        new_p = p * decay - lr * u
        new_m = beta2 * m + one_minus_beta2 * g
        _store_f32(p_ptr, offsets, new_p, mask, P_KIND, MASKED)
        _store_f32(m_ptr, offsets, new_m, mask, M_KIND, MASKED)
        return 0


@triton.jit
def _tensor_scalars(
    tensor, counts_ptr, lr_ptr, lr, decay, weight_decay, max_lr, grad_scale_ptr,
    LR_ON_DEVICE: tl.constexpr, DECOUPLED: tl.constexpr, CAUTIOUS: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr, COUNT_ONLY: tl.constexpr,
):
    """The float32 ``(lr, decay, grad_scale, kept_fraction)`` that every block of tensor ``tensor``
    uses (the kernels' arguments of the same names)."""
    if LR_ON_DEVICE:
        lr_value = tl.load(lr_ptr)
        lr64 = lr_value.to(tl.float64)
        # tl.full keeps the float64 hyperparameters exact in the interpreter too.
        weight_decay64 = tl.full([], weight_decay, tl.float64)
        if DECOUPLED:
            decay64 = 1.0 - weight_decay64 * (lr64 / tl.full([], max_lr, tl.float64))
        else:
            decay64 = 1.0 - lr64 * weight_decay64
        lr32 = lr_value.to(tl.float32)
        decay32 = decay64.to(tl.float32)
    else:
        lr32 = lr
        decay32 = decay
    grad_scale = 1.0
    if HAS_GRAD_SCALE:
        grad_scale = tl.load(grad_scale_ptr).to(tl.float32)
    kept_fraction = 1.0
    if CAUTIOUS and not COUNT_ONLY:
        # lion_core.cautious_mask divides by mean(mask) in float32, which NumPy computes as the
        # float64 quotient of the (exact) count by n, rounded once; 1 where nothing is kept.
        # counts[tensor] = (kept, element count) of the whole tensor: of every shard, when the
        # launcher's caller all-reduced them (DTensor), else this tensor's own.
        kept_total = tl.load(counts_ptr + 2 * tensor)
        whole = tl.load(counts_ptr + 2 * tensor + 1)
        fraction = (kept_total.to(tl.float64) / whole.to(tl.float64)).to(tl.float32)
        kept_fraction = tl.where(kept_total > 0, fraction, 1.0)
    return lr32, decay32, grad_scale, kept_fraction


@triton.jit(do_not_specialize=["n_tensors", "n_chunks"])
def lion_kernel(
    addresses_ptr,
    layout_ptr,
    n_tensors,
    n_chunks,
    counts_ptr,
    lr_ptr,
    lr,
    decay,
    weight_decay: tl.float64,
    max_lr: tl.float64,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    grad_scale_ptr,
    found_inf_ptr,
    P_KIND: tl.constexpr,
    G_KIND: tl.constexpr,
    M_KIND: tl.constexpr,
    LR_ON_DEVICE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    COUNT_ONLY: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Updates (or, with ``COUNT_ONLY``, counts the cautious mask of) one chunk of one tensor.

    With ``COUNT_ONLY`` the program adds the number of entries the cautious mask keeps in its chunk
    to ``counts[tensor, 0]`` (int64, shape (T, 2)) and writes nothing else; the update launch that
    follows reads the complete counts, ``(kept, element count)`` per tensor. ``lr`` and ``decay``
    are float32 values computed on the host unless
    ``LR_ON_DEVICE``, where both come from the 0-d tensor at ``lr_ptr`` (``decay`` in float64, as
    ``lion_core.decay_factor`` computes it for a Python float, then rounded once).
    """
    if HAS_FOUND_INF:
        # GradScaler found an inf or NaN gradient: the step is skipped, decided on the device.
        if tl.load(found_inf_ptr) != 0:
            return
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(layout_ptr + n_tensors + pid)
    chunk = tl.load(layout_ptr + n_tensors + n_chunks + pid)
    numel = tl.load(layout_ptr + tensor)
    p_ptr = _typed(tl.load(addresses_ptr + tensor), P_KIND)
    g_ptr = _typed(tl.load(addresses_ptr + n_tensors + tensor), G_KIND)
    m_ptr = _typed(tl.load(addresses_ptr + 2 * n_tensors + tensor), M_KIND)
    if ALIGNED:
        # Every address in the group is a multiple of 16 bytes (checked by the launcher).
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        m_ptr = tl.multiple_of(m_ptr, 16)

    lr32, decay32, grad_scale, kept_fraction = _tensor_scalars(
        tensor, counts_ptr, lr_ptr, lr, decay, weight_decay, max_lr, grad_scale_ptr, LR_ON_DEVICE, DECOUPLED,
        CAUTIOUS, HAS_GRAD_SCALE, COUNT_ONLY,
    )

    start = chunk * CHUNK  # int64: tensors may hold more than 2**31 elements
    length = tl.minimum(numel - start, CHUNK)
    full = length // BLOCK * BLOCK
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    kept = tl.full([], 0, tl.int64)
    for offset in range(0, full, BLOCK):
        offsets = start + offset + lanes
        kept += _block(
            p_ptr, g_ptr, m_ptr, offsets, None, lr32, decay32, beta1, one_minus_beta1, beta2,
            one_minus_beta2, grad_scale, kept_fraction, P_KIND, G_KIND, M_KIND, MAXIMIZE, CAUTIOUS,
            HAS_GRAD_SCALE, COUNT_ONLY, False,
        )
    if full < length:
        offsets = start + full + lanes
        kept += _block(
            p_ptr, g_ptr, m_ptr, offsets, offsets < numel, lr32, decay32, beta1, one_minus_beta1,
            beta2, one_minus_beta2, grad_scale, kept_fraction, P_KIND, G_KIND, M_KIND, MAXIMIZE,
            CAUTIOUS, HAS_GRAD_SCALE, COUNT_ONLY, True,
        )
    if COUNT_ONLY:
        tl.atomic_add(counts_ptr + 2 * tensor, kept)


# --- state formats: int8 momentum, stochastically rounded bfloat16 parameters ----------------------

#: lion_core.INT8's block: one float32 scale per 256 elements of the flattened tensor.
INT8_BLOCK: tl.constexpr = tl.constexpr(256)
#: The momentum stored as int8 codes (lion_core.INT8) in the launcher's kind numbering.
I8: tl.constexpr = tl.constexpr(4)


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


if triton.knobs.runtime.interpret:
    # As for _add: the interpreter reduces with NumPy only for the standard library's function.
    _maximum = tl.standard._elementwise_max  # noqa: F811


@triton.jit
def _mix32(x):
    """lion_core.mix32 on uint32 values (products wrap modulo 2**32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _random_bits(key, offsets):
    """lion_core.counter_hash for the step key ``key`` at flat indices ``offsets`` (modulo 2**32)."""
    index = (offsets & 0xFFFFFFFF).to(tl.uint32)
    return _mix32(_mix32(index ^ key) + key)


@triton.jit
def _store_stochastic(ptr, offsets, x, random, mask):
    """lion_core.stochastic_round_bfloat16_bits: add the top 16 random bits to the 16 dropped bits
    and truncate; NaN keeps its sign and high payload, made quiet."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + (random >> 16)) >> 16
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    value = tl.where(is_nan, (bits | 0x00400000) >> 16, rounded).to(tl.uint16)
    tl.store(ptr + offsets, value, mask=mask)


@triton.jit
def _stored_tile(
    p_ptr, g_ptr, m_ptr, s_ptr, offsets, rows, mask, row_mask, lr, decay, beta1, one_minus_beta1, beta2,
    one_minus_beta2, grad_scale, kept_fraction, momentum_key, param_key,
    P_KIND: tl.constexpr, G_KIND: tl.constexpr, M_KIND: tl.constexpr, STOCHASTIC: tl.constexpr,
    MAXIMIZE: tl.constexpr, CAUTIOUS: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, COUNT_ONLY: tl.constexpr,
):
    """One tile of whole blocks (``offsets``: rows of INT8_BLOCK flat indices, ``rows``: their block
    numbers); returns how many entries the cautious mask keeps."""
    g = _load_f32(g_ptr, offsets, mask, G_KIND, True)
    if M_KIND == I8:
        scale = tl.load(s_ptr + rows, mask=row_mask, other=0.0)
        codes = tl.load(m_ptr.to(tl.pointer_type(tl.int8)) + offsets, mask=mask, other=0)
        m = codes.to(tl.float32) * scale[:, None]
    else:
        m = _load_f32(m_ptr, offsets, mask, M_KIND, True)
    if HAS_GRAD_SCALE:
        g = tl.math.div_rn(g, grad_scale)
    if MAXIMIZE:
        g = -g
    c = beta1 * m + one_minus_beta1 * g
    u = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0)) + (c - c)
    agree = u * g > 0
    if COUNT_ONLY:
        return tl.reduce(tl.reduce(agree.to(tl.int32), 1, _add), 0, _add)
    else:
        if CAUTIOUS:
            u = tl.math.div_rn(u * tl.where(agree, u * u, 0.0), kept_fraction)
        p = _load_f32(p_ptr, offsets, mask, P_KIND, True)
        new_p = p * decay - lr * u
        if STOCHASTIC:
            _store_stochastic(p_ptr, offsets, new_p, _random_bits(param_key, offsets), mask)
        else:
            _store_f32(p_ptr, offsets, new_p, mask, P_KIND, True)
        new_m = beta2 * m + one_minus_beta2 * g
        if M_KIND == I8:
            # lion_core.BlockwiseInt8.encode, one correctly rounded float32 operation at a time. The
            # largest magnitude is taken on the bit patterns: a NaN's exceeds infinity's, so a NaN
            # in the block makes its scale NaN, as NumPy's max does. Masked lanes hold 0.
            largest = tl.reduce((new_m.to(tl.uint32, bitcast=True) & 0x7FFFFFFF), 1, _maximum)
            new_scale = largest.to(tl.float32, bitcast=True) * 0.007874015718698502  # INV_CODE_MAX
            tl.store(s_ptr + rows, new_scale, mask=row_mask)
            inverse = tl.math.div_rn(tl.full(new_scale.shape, 1.0, tl.float32),
                                     tl.where(new_scale == 0, 1.0, new_scale))
            y = new_m * inverse[:, None]
            # On NVIDIA GPUs floor is cvt.rmi.ftz: a subnormal y floors as +-0. The codes are the
            # same: for y in (-2**-126, 0), floor(y) = -1 gives y - low = 1.0 (rounded) and q = 0
            # for every u, as low = -0 gives q = 0 + (u < y) = 0; positive y floors to 0 either way.
            low = tl.floor(y)
            uniform = (_random_bits(momentum_key, offsets) >> 8).to(tl.float32) * 5.960464477539063e-08
            q = low + tl.where(uniform < y - low, 1.0, 0.0)
            q = tl.where(q == q, tl.minimum(tl.maximum(q, -127.0), 127.0), 0.0)  # noqa: PLR0124 (NaN: 0)
            tl.store(m_ptr.to(tl.pointer_type(tl.int8)) + offsets, q.to(tl.int8), mask=mask)
        else:
            _store_f32(m_ptr, offsets, new_m, mask, M_KIND, True)
        return 0


@triton.jit(do_not_specialize=["n_tensors", "n_chunks"])
def lion_stored_kernel(
    addresses_ptr,
    layout_ptr,
    keys_ptr,
    n_tensors,
    n_chunks,
    counts_ptr,
    lr_ptr,
    lr,
    decay,
    weight_decay: tl.float64,
    max_lr: tl.float64,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    grad_scale_ptr,
    found_inf_ptr,
    P_KIND: tl.constexpr,
    G_KIND: tl.constexpr,
    M_KIND: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    LR_ON_DEVICE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    COUNT_ONLY: tl.constexpr,
    ROWS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """``lion_kernel`` for a group with a state format: an int8 momentum (``M_KIND == I8``; codes
    at the momentum's address, float32 scales at ``addresses[3, t]``) and/or a bfloat16 parameter
    rounded stochastically (``STOCHASTIC``). ``keys[2, T]``: int64 step keys of the momentum's and
    the parameter's rounding. The program updates chunk ``pid`` (``CHUNK`` elements, a whole number
    of blocks) in tiles of ``ROWS`` blocks: a block's scale needs all of its new momentum."""
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:
            return
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(layout_ptr + n_tensors + pid)
    chunk = tl.load(layout_ptr + n_tensors + n_chunks + pid)
    numel = tl.load(layout_ptr + tensor)
    p_ptr = _typed(tl.load(addresses_ptr + tensor), P_KIND)
    g_ptr = _typed(tl.load(addresses_ptr + n_tensors + tensor), G_KIND)
    m_ptr = _typed(tl.load(addresses_ptr + 2 * n_tensors + tensor), M_KIND)
    s_ptr = tl.load(addresses_ptr + 3 * n_tensors + tensor).to(tl.pointer_type(tl.float32))
    momentum_key = (tl.load(keys_ptr + tensor) & 0xFFFFFFFF).to(tl.uint32)
    param_key = (tl.load(keys_ptr + n_tensors + tensor) & 0xFFFFFFFF).to(tl.uint32)

    lr32, decay32, grad_scale, kept_fraction = _tensor_scalars(
        tensor, counts_ptr, lr_ptr, lr, decay, weight_decay, max_lr, grad_scale_ptr, LR_ON_DEVICE, DECOUPLED,
        CAUTIOUS, HAS_GRAD_SCALE, COUNT_ONLY,
    )

    start = chunk * CHUNK  # int64, a multiple of INT8_BLOCK
    length = tl.minimum(numel - start, CHUNK)
    row_lanes = tl.arange(0, ROWS).to(tl.int64)
    lanes = tl.arange(0, INT8_BLOCK).to(tl.int64)
    kept = tl.full([], 0, tl.int64)
    for offset in range(0, length, ROWS * INT8_BLOCK):
        first = start + offset + row_lanes * INT8_BLOCK
        offsets = first[:, None] + lanes[None, :]
        kept += _stored_tile(
            p_ptr, g_ptr, m_ptr, s_ptr, offsets, first // INT8_BLOCK, offsets < numel, first < numel, lr32,
            decay32, beta1, one_minus_beta1, beta2, one_minus_beta2, grad_scale, kept_fraction, momentum_key,
            param_key, P_KIND, G_KIND, M_KIND, STOCHASTIC, MAXIMIZE, CAUTIOUS, HAS_GRAD_SCALE, COUNT_ONLY,
        )
    if COUNT_ONLY:
        tl.atomic_add(counts_ptr + 2 * tensor, kept)
