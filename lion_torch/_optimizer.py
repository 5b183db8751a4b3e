"""``lion_torch.Lion``: the ``torch.optim.Optimizer`` around ``lion_torch.lion``."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, Final, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

import lion_core

from ._functional import _choose, _dtensor_type, _dtype_name, _skip_step, _torch_dtype, lion, require_kernel

__all__ = ["Lion"]

_DEFAULTS = lion_core.defaults.TORCH
_LR: Final = cast(float, _DEFAULTS.lr)
_WEIGHT_DECAY: Final = cast(float, _DEFAULTS.weight_decay)

#: Options a parameter group may lack when it comes from a checkpoint of another Lion
#: (lion-pytorch's groups hold only lr, betas and weight_decay): the values that mean "off".
_VARIANT_DEFAULTS: Final[Mapping[str, Any]] = {
    "cautious": False,
    "decouple_lr": False,
    "max_lr": None,
    "maximize": False,
    "momentum_dtype": None,
    "stochastic_rounding": False,
    "seed": None,
    "foreach": None,
    "fused": None,
}
_STATE_KEYS: Final = ("exp_avg",)
#: The state of a parameter with a state format: an int8 momentum's codes and block scales, and the
#: count of its updates (the ``step`` of its random bits); a float momentum with a stochastically
#: rounded parameter keeps ``exp_avg`` and ``step``.
_INT8_STATE_KEYS: Final = ("exp_avg", "exp_avg_scales", "step")
_ROUNDED_STATE_KEYS: Final = ("exp_avg", "step")
#: ``momentum_dtype`` values that select the 8-bit momentum.
_INT8: Final = ("int8", torch.int8)
_GRAD = operator.attrgetter("grad")
_NOT_NONE = functools.partial(operator.is_not, None)
_LAYOUT = operator.attrgetter("layout")
_STRIDED_ONLY: Final = frozenset({torch.strided})


def _momentum_dtype_name(value: object) -> object:
    """A torch dtype as lion_core names it; anything else unchanged, for lion_core to judge."""
    return _dtype_name(value) if isinstance(value, torch.dtype) else value


def _check_not_callable(value: object, name: str) -> None:
    # lion_core lets schedules through for the hosts that call them; torch.optim never does.
    if callable(value):
        raise lion_core.invalid_type(
            name, "a real number or a one-element tensor (schedule it with torch.optim.lr_scheduler)", value
        )


def _check_has_value(value: object, name: str) -> None:
    # A meta tensor has no value: torch would fail at the first step, with its own internal text.
    if isinstance(value, Tensor) and value.device.type == "meta":
        raise lion_core.invalid_value(name, "a real number or a one-element tensor with a value "
                                      "(not on the meta device)", value)


def _check_options(options: Mapping[str, Any]) -> None:
    """Validates the hyperparameters and flags of the constructor or of one parameter group."""
    betas = lion_core.check_betas(options["betas"], "betas")
    for name, value in (("lr", options["lr"]), ("betas[0]", betas[0]), ("betas[1]", betas[1]),
                        ("weight_decay", options["weight_decay"]), ("max_lr", options["max_lr"])):
        _check_not_callable(value, name)
        _check_has_value(value, name)
    lion_core.check_learning_rate(options["lr"], "lr")
    lion_core.check_weight_decay(options["weight_decay"], "weight_decay")
    lion_core.check_bool(options["cautious"], "cautious")
    lion_core.check_bool(options["maximize"], "maximize")
    lion_core.check_decoupling(options["decouple_lr"], options["max_lr"])
    lion_core.check_momentum_format(_momentum_dtype_name(options["momentum_dtype"]))
    lion_core.check_bool(options["stochastic_rounding"], "stochastic_rounding")
    if options["seed"] is not None:
        lion_core.check_seed(options["seed"], "seed")
    foreach = lion_core.check_optional_bool(options["foreach"], "foreach")
    fused = lion_core.check_optional_bool(options["fused"], "fused")
    if foreach and fused:
        _choose((), foreach, fused)  # raises the combination error


def _max_lr(group: Mapping[str, Any]) -> Any:
    """The group's ``max_lr`` under ``lion_core.resolve_max_lr``: a tensor lr counts as its value now."""
    lr = group["lr"]
    initial = float(lr) if isinstance(lr, Tensor) else lr
    return lion_core.resolve_max_lr(group["max_lr"], initial, lr_name="lr")


def _draw_seed() -> int:
    """One seed from torch's default generator (``torch.manual_seed`` makes it reproducible)."""
    return int(torch.randint(0, 2**32, (), dtype=torch.int64))


def _needs_seed(options: Mapping[str, Any]) -> bool:
    """Whether the options draw random bits: an int8 momentum or stochastic rounding."""
    return _momentum_dtype_name(options["momentum_dtype"]) == "int8" or options["stochastic_rounding"] is True


@functools.lru_cache(maxsize=None)
def _spec_of(param_dtype: torch.dtype, momentum: object, stochastic_rounding: bool) -> lion_core.StateSpec:
    return lion_core.state_spec(_dtype_name(param_dtype), cast("str | None", momentum),
                                stochastic_rounding=stochastic_rounding)


def _state_spec(param: Tensor, group: Mapping[str, Any]) -> lion_core.StateSpec:
    """``param``'s state under the group's options (``lion_core.state_spec``, which checks them)."""
    # Dynamo warns about lru_cache wrappers; while tracing, the options are constants anyway.
    spec_of = _spec_of.__wrapped__ if torch.compiler.is_compiling() else _spec_of
    return spec_of(param.dtype, _momentum_dtype_name(group["momentum_dtype"]), group["stochastic_rounding"])


#: ``lion_core.derive_seed`` per (seed, stream, tensor index): constant for a parameter's lifetime.
_tensor_seed = functools.lru_cache(maxsize=1 << 16)(lion_core.derive_seed)


def _is_int8(momentum_dtype: object) -> bool:
    return _momentum_dtype_name(momentum_dtype) == "int8"


def _format_name(momentum_dtype: object) -> str:
    """How a group's momentum format is named in a mismatch error."""
    if _is_int8(momentum_dtype):
        return "momentum_dtype='int8', the 8-bit momentum this optimizer was built with"
    name = _momentum_dtype_name(momentum_dtype)
    return f"a floating-point momentum (momentum_dtype={name!r}), as this optimizer was built"


def _formatted(spec: lion_core.StateSpec) -> bool:
    """Whether a parameter's state has a format beyond a float momentum rounded to nearest."""
    return spec.needs_seed


def _momentum_dtype(param: Tensor, group: Mapping[str, Any]) -> torch.dtype:
    """The dtype of ``param``'s momentum under ``lion_core.momentum_dtype``'s policy."""
    requested = _momentum_dtype_name(group["momentum_dtype"])
    return _torch_dtype(lion_core.momentum_dtype(_dtype_name(param.dtype), cast("str | None", requested)))


class Lion(Optimizer):
    r"""Implements Lion, the sign-momentum optimizer found by program search (Chen et al. 2023).

    .. math::
       \begin{aligned}
            &\textbf{input}: \eta \text{ (lr)}, \beta_1, \beta_2 \text{ (betas)}, \lambda
                \text{ (weight\_decay)}, \theta_0 \text{ (params)}, f(\theta) \text{ (objective)} \\
            &\textbf{initialize}: m_0 \leftarrow 0 \text{ (exp\_avg)} \\
            &\textbf{for}\: t = 1 \:\textbf{to}\: \ldots \:\textbf{do} \\
            &\hspace{5mm} g_t \leftarrow \nabla_\theta f_t(\theta_{t-1})
                \quad (-\nabla_\theta f_t(\theta_{t-1}) \text{ if maximize}) \\
            &\hspace{5mm} c_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
            &\hspace{5mm} u_t \leftarrow \operatorname{sign}(c_t)
                \quad (\text{NaN where } c_t \text{ is not finite}) \\
            &\hspace{5mm} \textbf{if}\: \text{cautious}: u_t \leftarrow u_t \odot
                \mathbb{1}[u_t g_t > 0] \cdot n / n_\text{kept} \\
            &\hspace{5mm} d_t \leftarrow 1 - \eta_t \lambda
                \quad (1 - \lambda \eta_t / \eta_\text{max} \text{ if decouple\_lr}) \\
            &\hspace{5mm} \theta_t \leftarrow d_t \theta_{t-1} - \eta_t u_t \\
            &\hspace{5mm} m_t \leftarrow \beta_2 m_{t-1} + (1 - \beta_2) g_t \\
            &\textbf{return}\: \theta_t
       \end{aligned}

    The math is ``lion_core``'s; this class holds the state and picks an implementation. It is a
    drop-in for the paper authors' PyTorch code and for ``lion_pytorch.Lion``: same defaults, same
    numbers, and the same state key ``exp_avg``, so checkpoints load in both directions.

    Args:
      params: the parameters to optimize, or dicts defining parameter groups (each may override any
        option below).
      lr: the learning rate :math:`\eta`, a float or a one-element tensor (default: 1e-4). Lion's
        update has unit size per coordinate, so use a learning rate 3-10x smaller than AdamW's.
      betas: :math:`(\beta_1, \beta_2)`, the interpolation coefficient of the direction and the decay
        rate of the momentum (default: (0.9, 0.99)).
      weight_decay: decoupled weight decay :math:`\lambda`, applied to the old parameter with the
        current learning rate (default: 0.0). Use 3-10x AdamW's value.
      cautious: zero the update where its sign disagrees with the gradient's and rescale the rest by
        :math:`n / n_\text{kept}` per tensor (Liang et al. 2024) (default: False).
      decouple_lr: fully decoupled weight decay, :math:`1 - \lambda \eta_t / \eta_\text{max}`: the
        decay follows the schedule's shape, not the size of ``lr`` (default: False).
      max_lr: :math:`\eta_\text{max}` for ``decouple_lr``, per parameter group (default: None, meaning
        the group's lr when the group is added, stored as the group's ``max_lr``, which must then be
        positive; ``OneCycleLR`` overwrites it with its peak, which is the intended meaning). Pass it
        when a schedule peaks above the initial lr, or starts from 0. Only valid with
        ``decouple_lr=True``.
      maximize: ascend the objective instead of descending it (default: False).
      momentum_dtype: the dtype of ``exp_avg``, a floating ``torch.dtype``, or None for the
        parameter's dtype, as ``torch.optim`` keeps its state (default: None). ``torch.float32``
        for bfloat16 or float16 parameters keeps the momentum's small increments at two more bytes
        per element (see ``lion_core.momentum_dtype``). Kept across ``load_state_dict``.
        ``"int8"`` (or ``torch.int8``): an 8-bit momentum, ``lion_core.INT8``: int8 codes shaped
        like the parameter in ``exp_avg`` and one float32 scale per block of 256 elements of the
        flattened parameter in ``exp_avg_scales`` (1.016 bytes per element); each step decodes it,
        computes in float32 (float64 for float64 parameters) and encodes it with stochastically
        rounded codes. Not for complex parameters.
      stochastic_rounding: store bfloat16 parameters from the float32 result by unbiased
        stochastic rounding (``lion_core.stochastic_round_bfloat16``), so that updates below half
        a bfloat16 ulp are not rounded away; parameters of other dtypes are rounded to nearest
        (default: False).
      seed: the seed of the random bits of ``momentum_dtype="int8"`` and ``stochastic_rounding``,
        an integer in ``[0, 2**32)``; None draws one from torch's generator at construction
        (``torch.manual_seed`` makes it reproducible), only when a group uses them (default:
        None). The bits are ``lion_core.counter_hash`` of a key derived from the seed and the
        parameter's position over all groups (as ``state_dict`` numbers them), the parameter's
        own count of updates (``state["step"]``) and the element's flat index: those of
        ``lion_core.reference`` and of every kernel. Kept in every group, so ``state_dict``
        saves it and a resumed run continues with the same bits.
      foreach: use ``torch._foreach_*`` ops, grouped by device and dtype; None chooses them
        wherever the fused kernel is not the default (default: None). ``foreach=False`` alone
        selects the single-tensor path.
      fused: use a fused kernel, ``lion_kernels.triton_lion`` on CUDA or ``lion_kernels.cpu_lion``
        on CPU; None (with ``foreach=None``) chooses: the fused kernel when it can run (Triton
        installed on CUDA; the C extension built at install time on the CPU) and the step is not
        being compiled by ``torch.compile``, foreach otherwise (default: None). A default kernel
        that cannot run warns once per process (``lion_core.FallbackWarning``, naming the cause
        and the path taken); ``fused=True`` raises ``ImportError`` at construction instead, with
        the cause and the remedy. DTensor parameters (FSDP2's ``fully_shard``) are updated through
        their local shards; with ``cautious=True`` the kept/total counts of every sharded tensor
        are summed over the mesh in one all-reduce per step. Other tensor subclasses take the
        foreach path, and tensors the kernel cannot take (dtype, layout, overlapping memory) the
        single-tensor path, each with a one-time warning.

    Raises:
      ValueError, TypeError: an option is out of range or of the wrong type (text from
        ``lion_core``, naming ``lr``, ``betas[0]``, ``betas[1]``, ``weight_decay``, ``max_lr``, ...),
        including a complex or meta-device tensor, and a zero lr with ``decouple_lr=True`` and no
        ``max_lr``.
      RuntimeError: ``foreach=True`` with ``fused=True``; ``max_lr`` without ``decouple_lr``;
        ``momentum_dtype`` for complex parameters; ``momentum_dtype="int8"`` or
        ``stochastic_rounding=True`` (bfloat16) for DTensor parameters (FSDP2), whose local shards
        do not have the whole tensor's blocks and flat indices (the error names the parameter).

    Notes:
      Gradients are read, never written, also under ``torch.amp.GradScaler``, whose scale and
      inf check ``step`` applies itself. Parameters whose gradient is ``None`` are skipped and get
      no state. Complex parameters are updated as pairs of reals. Sparse gradients are refused.
      With ``momentum_dtype="int8"`` or ``stochastic_rounding``, the state also holds ``step``,
      which a parameter without a gradient, or a step that GradScaler skips, leaves unchanged; a
      fused kernel without a routine for these formats hands their tensors to the single-tensor
      path (one ``lion_core.FallbackWarning``). ``load_state_dict`` refuses a state saved with the
      other momentum format (``lion_core.mismatched_state``) instead of converting it.

    Example:
      >>> import torch
      >>> from lion_torch import Lion
      >>> model = torch.nn.Linear(4, 1)
      >>> opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
      >>> loss = model(torch.ones(8, 4)).pow(2).mean()
      >>> loss.backward()
      >>> opt.step()
      >>> opt.zero_grad()
      >>> sorted(opt.state[model.weight])
      ['exp_avg']
      >>> small = Lion(model.parameters(), lr=1e-4, momentum_dtype="int8", seed=0)  # 8-bit momentum
      >>> model(torch.ones(8, 4)).pow(2).mean().backward()
      >>> small.step()
      >>> state = small.state[model.weight]
      >>> sorted(state), state["exp_avg"].dtype
      (['exp_avg', 'exp_avg_scales', 'step'], torch.int8)

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
      Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code",
      arXiv:2411.16085.
    """

    #: ``torch.amp.GradScaler`` hands ``step`` the scale and the inf flag instead of unscaling the
    #: gradients in place and skipping the call itself.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = _LR,
        betas: tuple[float | Tensor, float | Tensor] = (_DEFAULTS.beta1, _DEFAULTS.beta2),
        weight_decay: float = _WEIGHT_DECAY,
        *,
        cautious: bool = False,
        decouple_lr: bool = False,
        max_lr: float | Tensor | None = None,
        maximize: bool = False,
        momentum_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
        seed: int | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "weight_decay": weight_decay,
            "cautious": cautious,
            "decouple_lr": decouple_lr,
            "max_lr": max_lr,
            "maximize": maximize,
            "momentum_dtype": momentum_dtype,
            "stochastic_rounding": stochastic_rounding,
            "seed": seed,
            "foreach": foreach,
            "fused": fused,
        }
        _check_options(defaults)
        if _needs_seed(defaults):
            # Drawn only when used: a Lion without random bits leaves torch's generator alone.
            defaults["seed"] = lion_core.resolve_seed(seed, _draw_seed)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a parameter group, validating its options as the constructor does.

        With ``decouple_lr=True`` and no ``max_lr``, the group's current lr is stored as its
        ``max_lr`` (``lion_core.resolve_max_lr``: it must be positive).
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_options(group)
            devices = set()
            dtensor = _dtensor_type()
            for j, p in enumerate(group["params"]):
                spec = _state_spec(p, group)  # refuses momentum_dtype for complex parameters
                if dtensor is not None and isinstance(p, dtensor) and _formatted(spec):
                    self._refuse_dtensor(j, p, group)
                devices.add(p.device.type)
            if group["fused"]:
                for device_type in sorted(devices):
                    require_kernel(device_type)
            max_lr = _max_lr(group) if group["decouple_lr"] else None
        except Exception:
            self.param_groups.pop()
            raise
        if group["decouple_lr"]:
            group["max_lr"] = max_lr
        if _needs_seed(group) and group["seed"] is None:
            # The optimizer's one seed, drawn when a group first needs it, kept in every group.
            seed = lion_core.resolve_seed(None, _draw_seed)
            self.defaults["seed"] = seed
            for other in self.param_groups:
                if other["seed"] is None:
                    other["seed"] = seed

    def _refuse_dtensor(self, index: int, param: Tensor, group: Mapping[str, Any]) -> None:
        name = f"param_groups[{len(self.param_groups) - 1}]['params'][{index}]"
        raise lion_core.incompatible(
            "`momentum_dtype='int8'` and `stochastic_rounding=True` are not supported for DTensor "
            "parameters (FSDP2's fully_shard): their 8-bit blocks and random bits are defined on the "
            "whole tensor's flat index, which a local shard does not have. Received: "
            f"momentum_dtype={_momentum_dtype_name(group['momentum_dtype'])!r}, "
            f"stochastic_rounding={group['stochastic_rounding']} for {name}, a DTensor of shape "
            f"{tuple(param.shape)} and dtype {param.dtype}"
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _VARIANT_DEFAULTS.items():
                group.setdefault(key, value)
            if group["decouple_lr"] and group["max_lr"] is None:
                group["max_lr"] = float(group["lr"])

    def _group_index(self, group: Mapping[str, Any]) -> int:
        return next(i for i, g in enumerate(self.param_groups) if g is group)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
    ) -> None:
        """Collects the parameters of ``group`` that have a gradient; creates their state."""
        # Written for hundreds of tensors per step: C-level maps where possible, one dict lookup each.
        group_params = group["params"]
        group_grads = list(map(_GRAD, group_params))
        if not _STRIDED_ONLY.issuperset(map(_LAYOUT, filter(_NOT_NONE, group_grads))):
            self._refuse_sparse(group)
        state = self.state
        if all(map(_NOT_NONE, group_grads)):
            # Every parameter has a gradient and a state (the common case): whole lists at once.
            group_exp_avgs = [state[p].get("exp_avg") for p in group_params]
            if all(map(_NOT_NONE, group_exp_avgs)):
                params.extend(group_params)
                grads.extend(group_grads)
                exp_avgs.extend(group_exp_avgs)
                return
        for p, grad in zip(group_params, group_grads):
            if grad is None:
                continue
            param_state = state[p]
            exp_avg = param_state.get("exp_avg")
            if exp_avg is None:
                exp_avg = param_state["exp_avg"] = torch.zeros_like(
                    p, dtype=_momentum_dtype(p, group), memory_format=torch.preserve_format
                )
            params.append(p)
            grads.append(grad)
            exp_avgs.append(exp_avg)

    def _init_formatted_group(
        self,
        group: dict[str, Any],
        offset: int,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
    ) -> tuple[list[Tensor | None], list[int | None], list[int | None], list[dict[str, Any]]] | None:
        """``_init_group`` for a group with state formats (``momentum_dtype="int8"``,
        ``stochastic_rounding=True``); also returns the formats' lists for ``lion`` (None when no
        parameter has one) and the states whose ``step`` counts this update.

        The random bits' keys: ``t`` is the parameter's position over all groups (``offset`` + its
        index in the group, as ``state_dict`` numbers it), ``step`` its own count of updates.
        """
        layouts = (p.grad.layout for p in group["params"] if p.grad is not None)
        if not _STRIDED_ONLY.issuperset(layouts):
            self._refuse_sparse(group)
        seed = group["seed"]
        derive = lion_core.derive_seed if torch.compiler.is_compiling() else _tensor_seed
        scales: list[Tensor | None] = []
        momentum_keys: list[int | None] = []
        param_keys: list[int | None] = []
        counted: list[dict[str, Any]] = []
        for j, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            spec = _state_spec(p, group)
            state = self.state[p]
            if "exp_avg" not in state:
                self._init_state(p, group, spec, state)
            elif isinstance(spec.momentum, lion_core.BlockwiseInt8) != ("exp_avg_scales" in state):
                # the group's momentum_dtype was changed after its state was created
                raise lion_core.mismatched_state(
                    f"state of param_groups[{self._group_index(group)}]['params'][{j}]",
                    f"the format of momentum_dtype={_momentum_dtype_name(group['momentum_dtype'])!r}",
                    "an int8 momentum" if "exp_avg_scales" in state
                    else f"a {state['exp_avg'].dtype} momentum",
                )
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            scales.append(state.get("exp_avg_scales"))
            if not _formatted(spec):
                momentum_keys.append(None)
                param_keys.append(None)
                continue
            # a float state saved without stochastic rounding (lion-pytorch's) counts from here
            step, t = state.setdefault("step", 0), offset + j
            is_int8 = isinstance(spec.momentum, lion_core.BlockwiseInt8)
            momentum_keys.append(
                lion_core.step_key(derive(seed, lion_core.MOMENTUM_STREAM, t), step) if is_int8 else None
            )
            param_keys.append(
                lion_core.step_key(derive(seed, lion_core.PARAM_STREAM, t), step)
                if spec.param_rounding == "stochastic" else None
            )
            counted.append(state)
        if not counted:
            return None
        return scales, momentum_keys, param_keys, counted

    @staticmethod
    def _init_state(
        p: Tensor, group: Mapping[str, Any], spec: lion_core.StateSpec, state: dict[str, Any]
    ) -> None:
        """A fresh state in ``spec``'s formats (``exp_avg``; with a format, ``step``; int8 codes
        shaped like ``p`` and float32 ``exp_avg_scales``, one per block of the flattened ``p``)."""
        if isinstance(spec.momentum, lion_core.BlockwiseInt8):
            state["exp_avg"] = torch.zeros(p.shape, dtype=torch.int8, device=p.device)
            state["exp_avg_scales"] = torch.zeros(spec.momentum.blocks(p.numel()), dtype=torch.float32,
                                                  device=p.device)
        else:
            state["exp_avg"] = torch.zeros_like(p, dtype=_momentum_dtype(p, group),
                                                memory_format=torch.preserve_format)
        if _formatted(spec):
            state["step"] = 0

    def _refuse_sparse(self, group: dict[str, Any]) -> None:
        for j, p in enumerate(group["params"]):
            if p.grad is not None and p.grad.layout != torch.strided:
                raise lion_core.invalid_value(
                    f"param_groups[{self._group_index(group)}]['params'][{j}].grad.layout",
                    "torch.strided (Lion does not support sparse gradients)",
                    p.grad.layout,
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimization step.

        Args:
          closure: a callable that re-evaluates the model and returns the loss (default: None).

        Returns:
          The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        offset = 0
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            formats = None
            if group["stochastic_rounding"] is True or group["momentum_dtype"] in _INT8:
                formats = self._init_formatted_group(group, offset, params, grads, exp_avgs)
            else:
                self._init_group(group, params, grads, exp_avgs)
            offset += len(group["params"])
            # With state formats: their scales and rounding keys, and the states whose ``step``
            # counts the update unless GradScaler's ``found_inf`` skipped it (codes, scales and
            # step unchanged).
            scales, momentum_keys, param_keys, counted = formats or (None, None, None, [])
            beta1, beta2 = group["betas"]
            lion(
                params,
                grads,
                exp_avgs,
                foreach=group["foreach"],
                fused=group["fused"],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                max_lr=group["max_lr"] if group["decouple_lr"] else None,
                cautious=group["cautious"],
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
                scales=scales,
                momentum_keys=momentum_keys,
                param_keys=param_keys,
            )
            if formats is not None and not _skip_step(found_inf):
                for state in counted:
                    state["step"] += 1
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict of this class, of ``lion_pytorch.Lion`` or of the paper's code.

        Unlike ``torch.optim.Optimizer``'s, it keeps each momentum in the dtype its loaded group asks
        for (``momentum_dtype``; None means the parameter's) instead of casting it to the
        parameter's dtype whatever the group says: a float32 momentum saved for a bfloat16
        parameter with ``momentum_dtype=torch.float32`` comes back exact. An 8-bit momentum comes
        back as saved (int8 codes, float32 ``exp_avg_scales``) with its ``step``, and the groups'
        ``seed`` and ``stochastic_rounding``, so a resumed run draws the same random bits. Options
        a loaded group lacks keep their current values.

        Raises:
          ValueError: the state is not Lion's (another optimizer's keys, such as Adam's
            ``exp_avg_sq`` and ``step``), or a momentum's shape differs from its parameter's; or,
            from ``torch.optim.Optimizer``, the number of groups or of parameters differs.
          TypeError: a momentum is not a tensor; or the state was saved with another momentum
            format (an int8 momentum for a float one or the reverse: ``lion_core.mismatched_state``;
            it is never converted).
        """
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        originals: list[tuple[Tensor, dict[str, Any]]] = []
        if len(saved_groups) == len(groups) and all(
            len(s["params"]) == len(g["params"]) for s, g in zip(saved_groups, groups)
        ):
            for i, (saved, group) in enumerate(zip(saved_groups, groups)):
                saved_int8 = _is_int8(saved.get("momentum_dtype"))
                if "momentum_dtype" in saved and saved_int8 != _is_int8(group["momentum_dtype"]):
                    raise lion_core.mismatched_state(
                        f"state_dict['param_groups'][{i}]['momentum_dtype']",
                        _format_name(group["momentum_dtype"]),
                        f"momentum_dtype={_momentum_dtype_name(saved['momentum_dtype'])!r}",
                    )
            id_map = dict(
                zip(chain.from_iterable(s["params"] for s in saved_groups),
                    chain.from_iterable(g["params"] for g in groups))
            )
            int8_of = {id(p): _is_int8(g["momentum_dtype"]) for g in groups for p in g["params"]}
            for key, value in state_dict["state"].items():
                if key in id_map:
                    param = id_map[key]
                    saved_state = self._checked_state(key, value, param, int8_of[id(param)])
                    if saved_state is not None:
                        originals.append((param, saved_state))
            current = [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in groups]
            state_dict = {**state_dict, "param_groups": [{**c, **s} for c, s in zip(current, saved_groups)]}
        super().load_state_dict(state_dict)
        # torch.optim.Optimizer cast each momentum to its parameter's dtype; redo it from the saved
        # tensor with the loaded group's momentum_dtype, so a float32 momentum of a bfloat16
        # parameter saved with momentum_dtype=torch.float32 stays exact (and int8 codes stay codes).
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        for param, saved_state in originals:
            state = self.state[param]
            if "exp_avg_scales" in saved_state:
                state["exp_avg"] = saved_state["exp_avg"].to(device=param.device)
                state["exp_avg_scales"] = saved_state["exp_avg_scales"].to(device=param.device)
            else:
                dtype = _momentum_dtype(param, group_of[id(param)])
                state["exp_avg"] = saved_state["exp_avg"].to(device=param.device, dtype=dtype)
            if "step" in saved_state:
                state["step"] = saved_state["step"]

    @staticmethod
    def _checked_state(key: object, value: object, param: Tensor, int8: bool) -> dict[str, Any] | None:
        """One saved state entry, after checking it is Lion's, in the expected format, and fits ``param``."""
        name = f"state_dict['state'][{key!r}]"
        keys = sorted(value) if isinstance(value, Mapping) else value
        allowed = (list(_STATE_KEYS), sorted(_ROUNDED_STATE_KEYS), sorted(_INT8_STATE_KEYS))
        if not isinstance(value, Mapping) or (value and list(keys) not in allowed):
            expected = f"{list(_STATE_KEYS)}, the state Lion keeps (is it another optimizer's?)"
            if int8:
                expected = (f"{sorted(_INT8_STATE_KEYS)}, the state of Lion's int8 momentum "
                            "(is it another optimizer's?)")
            raise lion_core.invalid_value(f"{name}.keys()", expected, keys)
        if not value:
            return None
        exp_avg = value["exp_avg"]
        if not isinstance(exp_avg, Tensor):
            raise lion_core.invalid_type(f"{name}['exp_avg']", "a tensor", exp_avg)
        saved_int8 = "exp_avg_scales" in value
        if saved_int8 != int8:
            raise lion_core.mismatched_state(
                name,
                "an int8 momentum (int8 `exp_avg` codes and float32 `exp_avg_scales`), as "
                "momentum_dtype='int8' keeps it" if int8 else "a floating-point momentum `exp_avg`",
                "an int8 momentum with `exp_avg_scales`" if saved_int8 else f"a {exp_avg.dtype} momentum",
            )
        if exp_avg.shape != param.shape:
            expected = f"{tuple(param.shape)}, the shape of its parameter"
            raise lion_core.invalid_value(f"{name}['exp_avg'].shape", expected, tuple(exp_avg.shape))
        if "step" in value:
            step = value["step"]
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise lion_core.invalid_value(f"{name}['step']", "an integer >= 0 (the updates made)", step)
        if saved_int8:
            scales = value["exp_avg_scales"]
            blocks = lion_core.INT8.blocks(param.numel())
            if exp_avg.dtype != torch.int8:
                raise lion_core.invalid_value(f"{name}['exp_avg'].dtype", "torch.int8 (the codes)",
                                              exp_avg.dtype)
            if not (isinstance(scales, Tensor) and scales.dtype == torch.float32
                    and tuple(scales.shape) == (blocks,)):
                expected = (f"a float32 tensor of shape ({blocks},), one scale per block of "
                            f"{lion_core.INT8.block_size}")
                received = (f"{scales.dtype} of shape {tuple(scales.shape)}" if isinstance(scales, Tensor)
                            else scales)
                raise lion_core.invalid_value(f"{name}['exp_avg_scales']", expected, received)
            return dict(value)
        if exp_avg.is_complex() != param.is_complex():
            raise lion_core.invalid_value(
                f"{name}['exp_avg'].dtype", f"a dtype like its parameter's {param.dtype}", exp_avg.dtype
            )
        return dict(value)
