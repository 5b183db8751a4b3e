r"""``lion_keras.Lion``: Keras 3's optimizer API, ``lion_core``'s rule, on every Keras backend."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Union

import keras
import numpy as np
from keras import ops

import lion_core
from lion_core import defaults

from . import _formats

_DEFAULTS = defaults.KERAS

#: A value Keras evaluates each step: a number, a scalar tensor, or a callable with no arguments.
Hyperparameter = Union[float, Any, Callable[[], Any]]

_COMPLEX_PARTS = {"complex64": "float32", "complex128": "float64"}


def _dtype(x: Any) -> str:
    """The dtype of a Keras variable, a backend tensor or a ``tf.Variable``, by its NumPy name."""
    return keras.backend.standardize_dtype(x.dtype)


def _current(value: Hyperparameter) -> Any:
    """Evaluates a hyperparameter given as a callable, as Keras documents for ``beta_1``/``beta_2``."""
    return value() if callable(value) else value


def _as_learning_rate(value: Any) -> Any:
    """Validates ``learning_rate``; concrete numbers become the ``float`` that Keras' base class wants."""
    lion_core.check_learning_rate(value, "learning_rate")
    number = None if callable(value) else lion_core.concrete_scalar(value, "learning_rate")
    return value if number is None else number


def _as_weight_decay(value: Any) -> float | None:
    """Validates ``weight_decay``: ``None`` or a constant, as Keras' base class applies it."""
    if value is None:
        return None
    if callable(value):
        # Keras' base class casts `weight_decay` to a tensor every step, so a schedule would pass here
        # and crash at the first update: refuse it now.
        raise lion_core.invalid_type("weight_decay", "None or a non-negative real number", value)
    lion_core.check_weight_decay(value, "weight_decay")
    number = lion_core.concrete_scalar(value, "weight_decay")
    return value if number is None else number


def _draw_seed() -> int:
    """One uint32 from Keras' global random generator (``keras.utils.set_random_seed`` fixes it)."""
    high, low = (int(x) for x in ops.convert_to_numpy(keras.random.randint((2,), 0, 2**16, dtype="int32")))
    return high << 16 | low


def _coefficients(beta: Hyperparameter, dtype: str) -> tuple[Any, Any]:
    """``(beta, 1 - beta)`` in ``dtype`` as ``lion_core.reference`` forms them: ``1 - beta`` in
    Python for a number (then rounded once), so an 8-bit momentum's codes match it bit for bit."""
    value = _current(beta)
    if isinstance(value, numbers.Real):
        return ops.cast(value, dtype), ops.cast(1 - value, dtype)
    value = ops.cast(value, dtype)
    return value, 1 - value


def _formatted(spec: lion_core.StateSpec | None) -> bool:
    """Whether a variable's state needs lion_core's formats (an 8-bit momentum, stochastic rounding)."""
    return spec is not None and (spec.momentum.name == "int8" or spec.param_rounding == "stochastic")


def _serialize_hyperparameter(value: Any) -> Any:
    if callable(value):
        return keras.saving.serialize_keras_object(value)
    if isinstance(value, numbers.Real):
        return value
    return float(value)  # a constant scalar tensor


def _to_compute(x: Any, dtype: str) -> Any:
    """``x`` as a real array in the compute dtype: complex arrays become (real, imag) pairs."""
    if _dtype(x) in _COMPLEX_PARTS:
        x = ops.view_as_real(x)
    return ops.cast(x, dtype)


def _to_storage(x: Any, dtype: str) -> Any:
    """Rounds a result once, back to the dtype it is stored in (the inverse of ``_to_compute``)."""
    if dtype in _COMPLEX_PARTS:
        return ops.view_as_complex(ops.cast(x, _COMPLEX_PARTS[dtype]))
    return ops.cast(x, dtype)


@keras.saving.register_keras_serializable(package="lionkit")
class Lion(keras.optimizers.Optimizer):
    r"""The Lion optimizer (EvoLved Sign Momentum) for Keras 3, a drop-in for ``keras.optimizers.Lion``.

    For each variable :math:`p` with gradient :math:`g` and momentum :math:`m`, a step is

    .. math::

        c &= \beta_1 m + (1 - \beta_1) g \\
        p &\leftarrow p \, (1 - \eta \lambda) - \eta \operatorname{sign}(c) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2) g

    with learning rate :math:`\eta` and weight decay :math:`\lambda`. The rule is ``lion_core``'s,
    written once for every framework: :math:`\operatorname{sign}(0) = 0`, a NaN or infinite gradient
    makes the variable NaN instead of moving it by :math:`\pm\eta`, complex variables are pairs of
    reals, and the arithmetic runs in at least float32. Everything else (clipping, weight decay,
    ``exclude_from_weight_decay``, EMA, gradient accumulation, loss scaling, schedules) is Keras' base
    class at work, so with the defaults the numbers are those of ``keras.optimizers.Lion`` on every
    backend. On the PyTorch backend all variables are updated together: by lionkit's fused kernel
    (``lion_kernels``: the C kernel on the CPU, Triton on CUDA) where it can run, else with
    ``torch._foreach_*`` ops like Keras' own PyTorch Lion; a kernel that cannot run, or a variable it
    cannot take, warns once (``lion_core.FallbackWarning``, naming the cause and the path taken).

    Because the update is a sign, its norm is larger than Adam's: the paper finds a learning rate
    3-10x smaller than AdamW's suitable, with a weight decay 3-10x larger to keep
    :math:`\eta\lambda` (``lion_core.from_adamw`` does the conversion).

    Args:
      learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a callable
        with no arguments that returns the value to use. Defaults to ``0.001``.
      beta_1: :math:`\beta_1`, how much of the momentum enters the sign; a float, a constant scalar
        tensor, or a callable with no arguments, evaluated every step (in a compiled ``fit``, when
        the step is traced: to change it while training, return a ``keras.Variable``'s value).
        Defaults to ``0.9``.
      beta_2: :math:`\beta_2`, the momentum's decay rate; same types as ``beta_1``. Defaults to
        ``0.99``.
      weight_decay: :math:`\lambda`, decoupled weight decay, or ``None`` for none. Defaults to
        ``None``.
      clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency,
        loss_scale_factor, gradient_accumulation_steps, name: as for every
        ``keras.optimizers.Optimizer``.
      cautious: keyword-only. Zero the update where its sign disagrees with the gradient's and rescale
        the rest (Liang et al. 2024). Defaults to ``False``.
      decouple_lr: keyword-only. Fully decoupled weight decay: multiply variables by
        :math:`1 - \lambda \eta / \eta_\text{max}`, so the decay follows the schedule's shape but not
        the learning rate's size. Defaults to ``False``.
      max_lr: keyword-only. :math:`\eta_\text{max}` for ``decouple_lr=True``; defaults to
        ``learning_rate`` when that is a number (which must then be positive), and is required with a
        schedule or a callable, whose peak cannot be read at construction
        (``lion_core.resolve_max_lr``).
      momentum_dtype: keyword-only. The dtype to keep the momentum in (``"float32"``,
        ``"bfloat16"``, ...); ``None`` keeps the variable's dtype, as Keras' own optimizers do.
        ``"float32"`` for bfloat16 or float16 variables keeps the momentum's small increments at
        two more bytes per element (see ``lion_core.momentum_dtype``). ``"int8"`` keeps it in 8
        bits (``lion_core.INT8``): per variable, an int8 ``codes`` variable shaped like it and a
        float32 variable of one scale per block of 256 flattened elements, 1.016 bytes per element;
        each step decodes it, computes in float32 (float64 for float64 variables) and encodes it
        again with stochastically rounded codes (``lion_core.counter_hash``), bit for bit the
        codes of ``lion_core.reference``. Not for complex variables. Defaults to ``None``.
        (With ``"int8"`` or ``stochastic_rounding``, each variable also keeps an int32 count of
        its own updates, the random bits' step.)
      stochastic_rounding: keyword-only. Store bfloat16 variables by unbiased stochastic rounding
        of the float32 result (``lion_core.stochastic_round_bfloat16``) instead of rounding to
        nearest, which drops every update smaller than half a bfloat16 ulp (with a learning rate of
        1e-4 the variables never move). Their weight decay is then applied within the step, before
        the one rounding. Variables of other dtypes are rounded to nearest. Defaults to ``False``.
      seed: keyword-only. The seed (an integer in [0, 2**32)) of the random bits of
        ``momentum_dtype="int8"`` and ``stochastic_rounding``: those of element ``j`` of the
        ``t``-th variable of the optimizer's variable list at its ``s``-th update are
        ``lion_core.counter_hash(lion_core.derive_seed(seed, stream, t), s, j)``, the same on every
        backend. ``None`` draws one at construction from Keras' random generator
        (``keras.utils.set_random_seed`` makes it reproducible). It is kept in an optimizer
        variable, so saving and loading the optimizer resumes the same bits, and in
        ``get_config``. Defaults to ``None``.
      **kwargs: passed to ``keras.optimizers.Optimizer``.

    Raises:
      ValueError, TypeError: a hyperparameter is out of range or of the wrong type (from
        ``lion_core``, naming the argument as it is spelled here).
      RuntimeError: ``max_lr`` without ``decouple_lr=True``, or ``decouple_lr=True`` with a schedule
        and no ``max_lr``; at ``build``, a ``momentum_dtype`` for a complex variable.

    Example:
      >>> import numpy as np, keras, lion_keras
      >>> w = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
      >>> optimizer = lion_keras.Lion(learning_rate=0.1)
      >>> optimizer.apply([keras.ops.convert_to_tensor(np.array([0.5, -0.5], dtype="float32"))], [w])
      >>> print(keras.ops.convert_to_numpy(w))
      [ 0.9 -1.9]

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
      Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code",
      arXiv:2411.16085.
    """

    def __init__(
        self,
        learning_rate: Hyperparameter = _DEFAULTS.lr,
        beta_1: Hyperparameter = _DEFAULTS.beta1,
        beta_2: Hyperparameter = _DEFAULTS.beta2,
        weight_decay: float | None = _DEFAULTS.weight_decay,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        *,
        cautious: bool = False,
        decouple_lr: bool = False,
        max_lr: float | None = None,
        momentum_dtype: str | None = None,
        stochastic_rounding: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        learning_rate = _as_learning_rate(learning_rate)
        lion_core.check_beta(beta_1, "beta_1")
        lion_core.check_beta(beta_2, "beta_2")
        weight_decay = _as_weight_decay(weight_decay)
        lion_core.check_bool(cautious, "cautious")
        lion_core.check_decoupling(decouple_lr, max_lr)
        lion_core.check_momentum_format(momentum_dtype)
        lion_core.check_bool(stochastic_rounding, "stochastic_rounding")
        if seed is not None:
            seed = lion_core.check_seed(seed)
        if decouple_lr:
            max_lr = lion_core.resolve_max_lr(max_lr, learning_rate, lr_name="learning_rate")
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.cautious = cautious
        self.decouple_lr = decouple_lr
        self.max_lr = max_lr
        self.momentum_dtype = momentum_dtype
        self.stochastic_rounding = stochastic_rounding
        self._seed: keras.Variable | None = None
        if momentum_dtype == "int8" or stochastic_rounding:
            value = lion_core.resolve_seed(seed, _draw_seed)
            self._seed = self.add_variable(
                shape=(),
                dtype="uint32",
                initializer=lambda shape, dtype: np.full(shape, value, np.uint32),
                name="seed",
            )
        self._given_seed = seed
        self._specs: list[lion_core.StateSpec | None] = []
        self._momentum_scales: list[keras.Variable | None] = []
        self._steps: list[keras.Variable | None] = []
        # Variables that exist before `build` (the iteration count, a constant learning rate): a
        # saved state with only these comes from an optimizer that never stepped.
        self._unbuilt_variable_count = len(self.variables)

    def build(self, var_list: list[keras.Variable]) -> None:
        """Creates each model variable's state as ``lion_core.state_spec`` declares it: a momentum
        variable in ``lion_core.momentum_dtype``, or int8 codes and float32 block scales."""
        if self.built:
            return
        super().build(var_list)
        momentums, scales, steps, specs = [], [], [], []
        for variable in var_list:
            if self._overwrite_variable_with_gradient(variable):
                for state in (momentums, scales, steps, specs):
                    state.append(None)
                continue
            spec = lion_core.state_spec(
                _dtype(variable), self.momentum_dtype, stochastic_rounding=self.stochastic_rounding
            )
            specs.append(spec)
            # Same name as `add_variable_from_reference` gives, in the momentum's own dtype.
            prefix = getattr(variable, "path", str(variable.name)).replace("/", "_").replace(":", "_")
            layout = getattr(variable, "_layout", None)
            dtype = spec.momentum.name
            if dtype == _dtype(variable):
                momentums.append(self.add_variable_from_reference(variable, "momentum"))
            else:
                momentums.append(
                    self.add_variable(
                        shape=variable.shape, dtype=dtype, name=f"{prefix}_momentum", layout=layout
                    )
                )
            scales.append(None)
            if dtype == "int8":
                size = int(np.prod(variable.shape, dtype=np.int64))
                scales[-1] = self.add_variable(
                    shape=(lion_core.INT8.blocks(size),), dtype="float32", name=f"{prefix}_momentum_scales"
                )
            # The random bits' step: this variable's own updates (a step without its gradient does
            # not count), as lion_core.reference_lion_stored and lion_torch's state["step"] count.
            formatted = _formatted(spec)
            step = self.add_variable(shape=(), dtype="int32", name=f"{prefix}_step") if formatted else None
            steps.append(step)
        self._momentums = momentums
        self._momentum_scales = scales
        self._steps = steps
        self._specs = specs

    def _betas(self, dtype: str) -> tuple[Any, Any]:
        # Cast before `lion_core` forms `1 - beta`, as Keras' Lion does, so that the numbers match it.
        return ops.cast(_current(self.beta_1), dtype), ops.cast(_current(self.beta_2), dtype)

    def update_step(self, gradient: Any, variable: keras.Variable, learning_rate: Any) -> None:
        """Updates one variable and its momentum (weight decay was applied by the base class)."""
        index = self._get_variable_index(variable)
        if _formatted(self._specs[index]):
            self._formatted_step(index, gradient, variable, learning_rate)
            return
        momentum = self._momentums[index]
        gradient = ops.convert_to_tensor(gradient)  # densifies tf.IndexedSlices: Lion moves every entry
        dtype = lion_core.compute_dtype(_dtype(variable), _dtype(gradient), _dtype(momentum))
        lr = ops.cast(learning_rate, dtype)
        beta_1, beta_2 = self._betas(dtype)
        param, grad, m = (_to_compute(x, dtype) for x in (variable, gradient, momentum))
        update = lion_core.lion_direction(m, grad, beta1=beta_1, cautious=self.cautious, xp=ops)
        # The decay factor of `lion_core.lion_step` was already applied by `_apply_weight_decay`,
        # before this step and with the same learning rate; what is left of the step is `- lr * u`.
        self.assign(variable, _to_storage(param - lr * update, _dtype(variable)))
        self.assign(momentum, _to_storage(lion_core.next_momentum(m, grad, beta2=beta_2), _dtype(momentum)))

    def _formatted_step(
        self, index: int, gradient: Any, variable: keras.Variable, learning_rate: Any
    ) -> None:
        """``update_step`` for a variable with lion_core's formats: ``lion_core.reference_lion_stored``'s
        step (computed in float32, stored with the variable's rounding and the momentum's format)."""
        spec = self._specs[index]
        momentum, scales = self._momentums[index], self._momentum_scales[index]
        gradient = ops.convert_to_tensor(gradient)
        int8 = scales is not None
        stored = "float32" if int8 else _dtype(momentum)  # an 8-bit momentum is decoded to float32
        dtype = lion_core.compute_dtype(_dtype(variable), _dtype(gradient), stored)
        param, grad = ops.cast(variable, dtype), ops.cast(gradient, dtype)
        if int8:
            m = lion_core.INT8.decode(momentum, scales, xp=_formats.XP, dtype=dtype)
        else:
            m = ops.cast(momentum, dtype)
        # lion_core.interpolate's terms, each product rounded on its own, as the reference rounds them.
        zero = ops.minimum(self._iterations, 0)
        beta_1, rest_1 = _coefficients(self.beta_1, dtype)
        beta_2, rest_2 = _coefficients(self.beta_2, dtype)
        c = _formats.rounded(beta_1 * m, zero) + _formats.rounded(rest_1 * grad, zero)
        update = lion_core.sign_with_nan(c, xp=ops)
        if self.cautious:
            update = lion_core.cautious_mask(update, grad, xp=ops)
        new_m = _formats.rounded(beta_2 * m, zero) + _formats.rounded(rest_2 * grad, zero)
        lr = ops.cast(learning_rate, dtype)
        steps = self._steps[index]
        step = _formats.Bits.of(steps)  # this variable's updates before this one
        shape = tuple(variable.shape)
        if spec.param_rounding == "stochastic":
            if self._decays_in_step(variable):
                param = param * self._decay_factor(dtype)
            bits = _formats.random_bits(self._seed_bits(), lion_core.PARAM_STREAM, index, step, shape)
            self.assign(variable, _formats.stochastic_bfloat16(param - lr * update, bits))
        else:
            self.assign(variable, _to_storage(param - lr * update, _dtype(variable)))
        if int8:
            bits = _formats.random_bits(self._seed_bits(), lion_core.MOMENTUM_STREAM, index, step, shape)
            codes, new_scales = lion_core.INT8.encode(new_m, bits, xp=_formats.XP)
            self.assign(momentum, codes)
            self.assign(scales, new_scales)
        else:
            self.assign(momentum, _to_storage(new_m, _dtype(momentum)))
        self.assign_add(steps, ops.ones((), "int32"))

    def _seed_bits(self) -> _formats.Bits:
        return _formats.Bits.of(self._seed)

    def _seed_value(self) -> int:
        """The seed as a Python int (eager code only: ``get_config``, the PyTorch kernel's keys)."""
        return _python_int(self._seed)

    def _has_formats(self, variable: Any) -> bool:
        """Whether ``variable``'s state uses lion_core's formats (``_formatted_step`` updates it)."""
        return _formatted(self._specs[self._get_variable_index(variable)])

    def _rounds_stochastically(self, variable: Any) -> bool:
        spec = self._specs[self._get_variable_index(variable)] if self._specs else None
        return spec is not None and spec.param_rounding == "stochastic"

    def _decays_in_step(self, variable: Any) -> bool:
        """Whether the step itself decays ``variable``: stochastically rounded variables are
        decayed before their one rounding (to nearest, the decay alone would round away)."""
        return self.weight_decay is not None and self._use_weight_decay(variable)

    def _backend_update_step(
        self, grads: list[Any], trainable_variables: list[Any], learning_rate: Any
    ) -> None:
        # On PyTorch, one multi-tensor update for all variables instead of Keras' per-variable loop,
        # as Keras' own PyTorch Lion does; inside `stateless_apply` there are no tensors to update in
        # place, so the per-variable `update_step` runs there.
        if keras.backend.backend() == "torch" and not _in_stateless_scope():
            from ._torch import multi_tensor_update

            multi_tensor_update(self, grads, trainable_variables, learning_rate)
            return
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # Keras' base class decays as `p - p * wd * lr` before `update_step`, with the same learning
        # rate (on PyTorch as `p * (1 - wd * lr)`): lion_core's `p * (1 - lr * wd)` up to rounding,
        # and keeping it keeps the numbers of `keras.optimizers.Lion`. Fully decoupled decay has a
        # different factor, `lion_core.decay_factor(lr, wd, max_lr)`, which Keras has no hook for;
        # and Keras' PyTorch decay works in place, which would write through `stateless_apply`'s
        # inputs. Those two cases are handled here.
        if self.weight_decay is None:
            return
        variables = [v for v in variables if not self._rounds_stochastically(v)]  # decayed in the step
        if not variables:
            return
        torch_backend = keras.backend.backend() == "torch"
        stateless = _in_stateless_scope()
        if not self.decouple_lr and not (torch_backend and stateless):
            super()._apply_weight_decay(variables)
            return
        decayed = [v for v in variables if self._use_weight_decay(v)]
        if torch_backend and not stateless:
            from ._torch import multi_tensor_decay

            multi_tensor_decay(self, decayed)
            return
        for variable in decayed:
            dtype = lion_core.compute_dtype(_dtype(variable))
            factor = self._decay_factor(dtype)
            self.assign(variable, _to_storage(_to_compute(variable, dtype) * factor, _dtype(variable)))

    def _decay_factor(self, dtype: str) -> Any:
        """``lion_core.decay_factor`` for this step, as a scalar of ``dtype``."""
        return lion_core.decay_factor(
            ops.cast(self.learning_rate, dtype),
            ops.cast(self.weight_decay, dtype),
            None if self.max_lr is None else ops.cast(self.max_lr, dtype),
        )

    def load_own_variables(self, store: Any) -> None:
        """Restores the saved state, refusing one that does not fit instead of skipping it silently."""
        saved = len(store.keys())
        own = self.variables
        self._check_saved_format(store, saved)
        if saved != len(own) and not (self.built and saved == self._unbuilt_variable_count):
            hint = (
                "Build it first, e.g. `optimizer.build(model.trainable_variables)`."
                if not self.built
                else "It was saved for a different model, or with other `use_ema` or "
                "`gradient_accumulation_steps` settings."
            )
            raise _state_mismatch(
                f"Cannot load the saved state into optimizer '{self.name}': it has {len(own)} "
                f"variables, but the saved state has {saved}. {hint}"
            )
        # A state saved before the first step holds no momentum; this optimizer's stays zero.
        for i, variable in enumerate(own[:saved]):
            value = store[str(i)]
            problem = None
            if tuple(value.shape) != tuple(variable.shape):
                problem = f"shape {tuple(value.shape)}, expected {tuple(variable.shape)}"
            elif _is_float(_dtype(variable)) and _dtype(value) != _dtype(variable):
                problem = (
                    f"dtype {_dtype(value)}, expected {_dtype(variable)} "
                    "(pass the `momentum_dtype` it was saved with)"
                )
            if problem is not None:
                raise _state_mismatch(
                    f"Cannot load the saved state into optimizer '{self.name}': saved variable {i} "
                    f"('{variable.path}') has {problem}."
                )
            variable.assign(value)

    def _check_saved_format(self, store: Any, saved: int) -> None:
        """Refuses a state saved with another momentum format or rounding (``lion_core.mismatched_state``):
        int8 codes for a floating momentum or the reverse, a seed where none is kept or the reverse."""
        saved_int8 = any(_dtype(store[str(i)]) == "int8" for i in range(saved))
        own_int8 = self.momentum_dtype == "int8"
        # A state saved before the first step has no momentum, in any format.
        if saved_int8 != own_int8 and saved > self._unbuilt_variable_count:
            raise lion_core.mismatched_state(
                "momentum_dtype",
                f"a state saved with momentum_dtype={self.momentum_dtype!r}",
                "a state with int8 momentum codes (momentum_dtype='int8')"
                if saved_int8
                else "a state with a floating-point momentum",
            )
        # The seed is created right after the base class's variables (the iteration count and a
        # constant learning rate): a 0-d integer there.
        own_seed = self._seed is not None
        at = self._unbuilt_variable_count - 1 if own_seed else self._unbuilt_variable_count
        value = store[str(at)] if at < saved else None
        saved_seed = value is not None and tuple(value.shape) == () and "int" in _dtype(value)
        if saved_seed != own_seed:
            raise lion_core.mismatched_state(
                "stochastic_rounding",
                f"a state saved with stochastic_rounding={self.stochastic_rounding!r} and "
                f"momentum_dtype={self.momentum_dtype!r}",
                "a state with a seed (stochastic_rounding=True)"
                if saved_seed
                else "a state without a seed (stochastic_rounding=False)",
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": _serialize_hyperparameter(self.beta_1),
                "beta_2": _serialize_hyperparameter(self.beta_2),
                "cautious": self.cautious,
                "decouple_lr": self.decouple_lr,
                "max_lr": self.max_lr,
                "momentum_dtype": self.momentum_dtype,
                "stochastic_rounding": self.stochastic_rounding,
                "seed": self._given_seed if self._seed is None else self._seed_value(),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Lion:
        config = dict(config)
        for key in ("beta_1", "beta_2"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return super().from_config(config, custom_objects=custom_objects)


def _python_int(x: Any) -> int:
    """A scalar variable or tensor's value as a Python int (eager)."""
    value = getattr(x, "value", x)
    return int(value.item() if hasattr(value, "item") else value)


def _is_float(dtype: str) -> bool:
    return "float" in dtype


def _in_stateless_scope() -> bool:
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return in_stateless_scope()


def _state_mismatch(message: str) -> RuntimeError:
    """A saved optimizer state and this optimizer's configuration that cannot be combined."""
    return lion_core.incompatible(message)
