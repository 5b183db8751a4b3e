"""lion_core's state formats on lion_torch: ``momentum_dtype="int8"`` and ``stochastic_rounding=True``.

Every path runs ``cases.FORMAT_CASES`` against ``lion_core.reference.reference_lion_stored``: the
int8 codes and scales bit for bit, parameters within their budgets. The random bits' ``step`` is
each parameter's own count of updates (``state["step"]``, docs/hyperparameters.md), as in the
reference, which a step without a gradient does not advance. Also: odd and zero sizes, state dicts (round trip, resumed run,
refused formats), the seed, GradScaler, schedulers, the fused path's pass-through and DTensors.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch

import lion_core
import lion_torch._functional as functional
from lion_core.reference import Int8State
from lion_torch import Lion
from tests import cases
from tests.cases import assert_exact

from .helpers import DTYPES, FLAGS, PATHS, options, tensor, through_disk, train

pytestmark = [
    pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning"),
    # every fused step here runs in the kernel: a detour to another path is a failure
    pytest.mark.filterwarnings("error::lion_core.FallbackWarning"),
]

#: cases.SHAPES plus the block edges of lion_core.INT8 (255, 256, 257 elements, a 16 x 16 matrix).
SHAPES = (*cases.SHAPES, (255,), (257,), (16, 16))


def format_options(case: cases.Case, path: str) -> dict[str, object]:
    """The case as ``lion_torch.Lion`` arguments on ``path``, with its state formats."""
    return dict(options(case, path), stochastic_rounding=case.rounding == "stochastic", seed=case.seed)


def run_format_case(path, case, problem, *, scheduler=None):
    dtype, grad_dtype = DTYPES[case.param_dtype], DTYPES[case.gradient_dtype]
    params = [tensor(x, dtype, True) for x in problem.init]
    opt = Lion(params, **format_options(case, path))
    schedule = None if scheduler is None else scheduler(opt)
    for step, step_grads in enumerate(problem.grads):
        if schedule is None:
            opt.param_groups[0]["lr"] = case.lr_at(step)
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else tensor(g, grad_dtype)
        opt.step()
        if schedule is not None:
            schedule.step()
    return params, opt


def assert_matches(case, params, opt, expected, what=""):
    """Codes and scales (and a float momentum) bit for bit; parameters within their budget."""
    for i, p in enumerate(params):
        state = opt.state[p]
        label = f"{what}param {i}"
        if case.rounding == "stochastic":
            cases.assert_within_budget(p, expected.params[i], atol=0.0, **cases.STOCHASTIC_BUDGET, what=label)
        else:
            cases.assert_close(p, expected.params[i], **cases.BUDGETS[case.param_dtype].margin, what=label)
        if case.momentum_dtype == "int8":
            assert isinstance(expected.stored[i], Int8State)
            assert state["exp_avg"].dtype == torch.int8 and state["exp_avg"].shape == p.shape
            assert state["exp_avg_scales"].dtype == torch.float32
            assert_exact(state["exp_avg"], expected.stored[i].codes, what=f"{what}codes {i}")
            assert_exact(state["exp_avg_scales"], expected.stored[i].scales, what=f"{what}scales {i}")
        else:
            assert_exact(state["exp_avg"], expected.stored[i], what=f"{what}momentum {i}")


@pytest.mark.parametrize("case", cases.FORMAT_CASES, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_format_cases_match_the_reference(path, case):
    problem = cases.problem(case, margin=True, shapes=SHAPES, missing=None)
    params, opt = run_format_case(path, case, problem)
    assert_matches(case, params, opt, cases.reference(case, problem))
    for p in params:
        assert opt.state[p]["step"] == problem.steps


@pytest.mark.parametrize("case", cases.FORMAT_CASES, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_a_missing_gradient_leaves_the_state_and_its_count_alone(path, case):
    problem = cases.problem(case, margin=True)  # parameter 3 has no gradient at step 3
    params, opt = run_format_case(path, case, problem)
    assert_matches(case, params, opt, cases.reference(case, problem))
    step, index = cases.MISSING
    assert opt.state[params[index]]["step"] == problem.steps - 1
    assert opt.state[params[0]]["step"] == problem.steps


def _variant(name: str, **changes: object) -> cases.Case:
    row = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    return dataclasses.replace(row, id=name, **changes)


#: The formats composed with the other options (beyond FORMAT_CASES' weight decay and cautious).
VARIANTS = (
    _variant("int8_decoupled_schedule", lr=2e-3, weight_decay=0.5, max_lr=4e-3, schedule="warmup_decay"),
    _variant("int8_maximize", maximize=True, cautious=True),
    _variant("int8_betas", beta1=0.5, beta2=0.9, param_dtype="float32", rounding="nearest"),
)


@pytest.mark.parametrize("case", VARIANTS, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_formats_compose_with_the_variants(path, case):
    problem = cases.problem(case, margin=True, missing=None)
    params, opt = run_format_case(path, case, problem)
    assert_matches(case, params, opt, cases.reference(case, problem))


@pytest.mark.parametrize("path", PATHS)
def test_an_lr_scheduler_drives_the_formatted_step(path):
    case = _variant("int8_lambda_lr", schedule="warmup_decay")
    multipliers = cases.SCHEDULES["warmup_decay"]

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: multipliers[t % len(multipliers)])

    problem = cases.problem(case, margin=True, missing=None)
    params, opt = run_format_case(path, case, problem, scheduler=scheduler)
    assert_matches(case, params, opt, cases.reference(case, problem))


@pytest.mark.parametrize("path", PATHS)
def test_float64_parameters_with_int8_momentum(path):
    """float64 parameters compute in float64; the momentum is encoded from its float64 value."""
    case = dataclasses.replace(cases.by_id(cases.FORMAT_CASES, "int8_momentum"), id="int8_float64",
                               param_dtype="float64", lr=0.01)
    problem = cases.problem(case, missing=None)
    params, opt = run_format_case(path, case, problem)
    expected = cases.reference(case, problem)
    for i, p in enumerate(params):
        assert_exact(p, expected.params[i], what=f"param {i}")
        assert_exact(opt.state[p]["exp_avg"], expected.stored[i].codes, what=f"codes {i}")
        assert_exact(opt.state[p]["exp_avg_scales"], expected.stored[i].scales, what=f"scales {i}")


@pytest.mark.parametrize("path", PATHS)
def test_groups_and_memory_layouts_do_not_change_the_bits(path):
    """The tensor index counts over all groups, and the element index is the logical flat index:
    parameters split over two groups, one of them channels_last, end with the reference's bits."""
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    shapes = ((2, 3, 5, 7), (300,), (4, 3, 2, 2))
    problem = cases.problem(case, margin=True, shapes=shapes, missing=None)
    params = [tensor(x, torch.bfloat16, True) for x in problem.init]
    params[0] = params[0].detach().to(memory_format=torch.channels_last).requires_grad_(True)
    assert not params[0].is_contiguous()
    options = format_options(case, path)
    opt = Lion([{"params": params[:1]}, {"params": params[1:]}], **options)
    for step_grads in problem.grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.bfloat16)
        with warnings.catch_warnings():  # the kernels hand the channels_last tensor back (a warning)
            warnings.simplefilter("ignore", lion_core.FallbackWarning)
            opt.step()
    assert_matches(case, params, opt, cases.reference(case, problem))


def test_int8_state_takes_about_one_byte_per_element():
    p = torch.zeros(1 << 16, requires_grad=True)
    opt = Lion([p], momentum_dtype="int8", seed=0)
    p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state[p]
    nbytes = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    assert nbytes / p.numel() == pytest.approx(lion_core.INT8.bytes_per_element(p.numel()))
    assert nbytes / p.numel() <= 1.03
    assert state["exp_avg_scales"].shape == (lion_core.INT8.blocks(p.numel()),)


def test_stochastic_rounding_moves_bfloat16_parameters_that_nearest_rounding_leaves():
    """lr 1e-4 is below half a bfloat16 ulp of 1.0: nearest rounding never moves, stochastic does."""
    moved = {}
    for stochastic in (False, True):
        p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
        opt = Lion([p], lr=1e-4, stochastic_rounding=stochastic, seed=3, momentum_dtype=torch.float32)
        for _ in range(50):
            p.grad = torch.ones_like(p)
            opt.step()
        moved[stochastic] = 1.0 - p.float().mean().item()
    assert moved[False] == 0.0
    assert moved[True] == pytest.approx(50 * 1e-4, rel=0.1)  # unbiased: the float32 run's distance


# --- options, seed ---------------------------------------------------------------------------------


def test_seed_is_drawn_once_from_torchs_generator_and_kept_in_every_group():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    torch.manual_seed(1)
    opt = Lion([{"params": [a]}, {"params": [b], "lr": 0.1}], momentum_dtype="int8")
    torch.manual_seed(1)
    expected = int(torch.randint(0, 2**32, (), dtype=torch.int64))
    assert [g["seed"] for g in opt.param_groups] == [expected, expected]
    assert opt.state_dict()["param_groups"][1]["seed"] == expected
    torch.manual_seed(1)
    assert Lion([a], stochastic_rounding=True).param_groups[0]["seed"] == expected


def test_no_seed_is_drawn_without_random_bits():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    opt = Lion([torch.zeros(3, requires_grad=True)])
    assert torch.equal(torch.get_rng_state(), before)
    assert opt.param_groups[0]["seed"] is None
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "momentum_dtype": "int8"})
    seeds = {g["seed"] for g in opt.param_groups}
    assert len(seeds) == 1 and None not in seeds  # one optimizer-wide seed, drawn when first needed


def test_given_seed_is_used_and_torch_int8_names_the_format():
    p = torch.zeros(300, requires_grad=True)
    opt = Lion([p], momentum_dtype=torch.int8, seed=2**32 - 1)
    assert opt.param_groups[0]["seed"] == 2**32 - 1
    p.grad = torch.randn(300, generator=torch.Generator().manual_seed(0))
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.int8


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"seed": -1}, ValueError, "Invalid `seed`: expected 0 <= seed < 2**32. Received: seed=-1"),
        ({"seed": 2**32}, ValueError,
         "Invalid `seed`: expected 0 <= seed < 2**32. Received: seed=4294967296"),
        ({"seed": 1.5}, TypeError,
         "Invalid `seed`: expected an integer 0 <= seed < 2**32. Received: seed=1.5 of type float"),
        ({"seed": True}, TypeError,
         "Invalid `seed`: expected an integer 0 <= seed < 2**32. Received: seed=True of type bool"),
        ({"stochastic_rounding": "yes"}, TypeError, "Invalid `stochastic_rounding`"),
        ({"stochastic_rounding": None}, TypeError, "Invalid `stochastic_rounding`"),
        ({"momentum_dtype": "int4"}, ValueError,
         f"Invalid `momentum_dtype`: expected None or one of {lion_core.MOMENTUM_FORMATS}. "
         "Received: momentum_dtype='int4'"),
        ({"momentum_dtype": torch.uint8}, ValueError, "Received: momentum_dtype='uint8'"),
    ],
)
def test_bad_format_options_are_refused_naming_the_argument(kwargs, error, text):
    with pytest.raises(error, match=re.escape(text)):
        Lion([torch.zeros(2, requires_grad=True)], **kwargs)
    opt = Lion([torch.zeros(2, requires_grad=True)])
    with pytest.raises(error, match=re.escape(text)):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **kwargs})
    assert len(opt.param_groups) == 1


def test_int8_momentum_of_complex_parameters_is_refused():
    text = "`momentum_dtype` cannot be set for complex parameters"
    with pytest.raises(RuntimeError, match=re.escape(text)):
        Lion([torch.zeros(2, dtype=torch.complex64, requires_grad=True)], momentum_dtype="int8")


# --- state dicts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases.FORMAT_CASES, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(path, case):
    problem = cases.problem(case, shapes=((40, 25), (301,), (), (0,)), steps=10)
    dtype = DTYPES[case.param_dtype]
    options = format_options(case, path)
    options.pop("seed")  # drawn from torch's generator and saved in the state dict

    def fresh():
        return [tensor(x, dtype, True) for x in problem.init]

    torch.manual_seed(0)
    whole_params = fresh()
    whole = Lion(whole_params, **options)
    train(whole_params, whole, problem.grads)

    torch.manual_seed(0)
    first_params = fresh()
    first = Lion(first_params, **options)
    train(first_params, first, problem.grads[:4])
    saved = through_disk(first.state_dict())
    torch.manual_seed(1234)  # another seed would be drawn: the saved one must win
    resumed_params = [p.detach().clone().requires_grad_(True) for p in first_params]
    resumed = Lion(resumed_params, **options)
    assert resumed.param_groups[0]["seed"] != saved["param_groups"][0]["seed"]
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["seed"] == whole.param_groups[0]["seed"]
    train(resumed_params, resumed, problem.grads[4:])

    for i, (p, q) in enumerate(zip(resumed_params, whole_params)):
        assert_exact(p, q, what=f"param {i}")
        for key, value in whole.state[q].items():
            loaded = resumed.state[p][key]
            if isinstance(value, torch.Tensor):
                assert loaded.dtype == value.dtype
                assert_exact(loaded, value, what=f"{key} {i}")
            else:
                assert loaded == value


def test_state_dict_round_trip_keeps_codes_scales_step_and_seed():
    p = torch.randn(513, requires_grad=True)
    opt = Lion([p], momentum_dtype="int8", seed=11, weight_decay=0.1)
    p.grad = torch.randn(513)
    opt.step()
    saved = through_disk(opt.state_dict())
    state = saved["state"][0]
    assert sorted(state) == ["exp_avg", "exp_avg_scales", "step"]
    assert state["exp_avg"].dtype == torch.int8 and state["exp_avg_scales"].dtype == torch.float32
    assert state["step"] == 1 and saved["param_groups"][0]["seed"] == 11
    assert saved["param_groups"][0]["momentum_dtype"] == "int8"

    q = torch.nn.Parameter(p.detach().to(torch.bfloat16))  # another dtype: nothing may be cast to it
    loaded = Lion([q], momentum_dtype="int8", seed=3)
    loaded.load_state_dict(saved)
    assert loaded.param_groups[0]["seed"] == 11
    assert_exact(loaded.state[q]["exp_avg"], opt.state[p]["exp_avg"], what="codes")
    assert_exact(loaded.state[q]["exp_avg_scales"], opt.state[p]["exp_avg_scales"], what="scales")
    assert loaded.state[q]["exp_avg"].dtype == torch.int8
    assert loaded.state[q]["exp_avg_scales"].dtype == torch.float32


def _trained(momentum_dtype, **options):
    p = torch.randn(7, requires_grad=True)
    opt = Lion([p], momentum_dtype=momentum_dtype, **options)
    p.grad = torch.randn(7)
    opt.step()
    return opt


def test_an_int8_state_is_refused_by_a_float_momentum_optimizer():
    saved = through_disk(_trained("int8", seed=0).state_dict())
    opt = Lion([torch.zeros(7, requires_grad=True)])
    expected = (
        "Invalid `state_dict['param_groups'][0]['momentum_dtype']`: expected a floating-point momentum "
        "(momentum_dtype=None), as this optimizer was built. Received: momentum_dtype='int8'; build the "
        "optimizer with the momentum format the state was saved with, or start a fresh state"
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"] == {}


def test_a_float_state_is_refused_by_an_int8_optimizer():
    saved = through_disk(_trained(None).state_dict())
    opt = Lion([torch.zeros(7, requires_grad=True)], momentum_dtype="int8", seed=0)
    with pytest.raises(TypeError, match=re.escape(
        "Invalid `state_dict['param_groups'][0]['momentum_dtype']`: expected momentum_dtype='int8', the "
        "8-bit momentum this optimizer was built with. Received: momentum_dtype=None"
    )):
        opt.load_state_dict(saved)
    # lion-pytorch's checkpoints have no momentum_dtype: the state itself is checked
    del saved["param_groups"][0]["momentum_dtype"]
    with pytest.raises(TypeError, match=re.escape(
        "Invalid `state_dict['state'][0]`: expected an int8 momentum (int8 `exp_avg` codes and float32 "
        "`exp_avg_scales`), as momentum_dtype='int8' keeps it. Received: a torch.float32 momentum; build"
    )):
        opt.load_state_dict(saved)


def test_changing_a_groups_momentum_format_after_its_state_exists_is_refused():
    opt = _trained(None)
    opt.param_groups[0]["momentum_dtype"] = "int8"
    opt.param_groups[0]["seed"] = 0
    (p,) = opt.param_groups[0]["params"]
    p.grad = torch.ones(7)
    with pytest.raises(TypeError, match=re.escape(
        "Invalid `state of param_groups[0]['params'][0]`: expected the format of momentum_dtype='int8'. "
        "Received: a torch.float32 momentum; build the optimizer"
    )):
        opt.step()


def test_a_damaged_int8_state_is_refused():
    saved = through_disk(_trained("int8", seed=0).state_dict())
    saved["state"][0]["exp_avg_scales"] = saved["state"][0]["exp_avg_scales"].double()
    opt = Lion([torch.zeros(7, requires_grad=True)], momentum_dtype="int8", seed=0)
    with pytest.raises(ValueError, match=re.escape(
        "Invalid `state_dict['state'][0]['exp_avg_scales']`: expected a float32 tensor of shape (1,)"
    )):
        opt.load_state_dict(saved)


# --- GradScaler, the fused path, compile ---------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_grad_scaler_skip_leaves_codes_scales_and_step_alone(path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    params = list(model.parameters())
    opt = Lion(params, lr=0.01, weight_decay=0.1, momentum_dtype="int8", seed=4, **FLAGS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(16, 6), torch.randn(16, 3)

    def backward():
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()

    backward()
    init = [p.detach().double().numpy().copy() for p in params]
    unscaled = [[p.grad.double().numpy() / 2.0**12 for p in params]]  # a power of two: exact
    scaler.step(opt)
    scaler.update()
    case = dataclasses.replace(cases.by_id(cases.FORMAT_CASES, "int8_momentum"), lr=0.01, seed=4)
    expected = cases.reference(case, cases.Problem(init, unscaled))
    assert_matches(case, params, opt, expected)

    backward()
    params[0].grad[0, 0] = float("inf")
    before = [(p.detach().clone(), {k: v.clone() if isinstance(v, torch.Tensor) else v
                                    for k, v in opt.state[p].items()}) for p in params]
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    for p, (p0, state) in zip(params, before):
        assert_exact(p, p0, what="param after a skipped step")
        assert opt.state[p]["step"] == state["step"] == 1
        assert_exact(opt.state[p]["exp_avg"], state["exp_avg"], what="codes after a skipped step")
        assert_exact(opt.state[p]["exp_avg_scales"], state["exp_avg_scales"],
                     what="scales after a skipped step")


class _Recorder:
    """Wraps a kernel module: records the formats ``lion_`` receives, delegates to the real kernel."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.received = []

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def lion_(self, params, grads, momenta, **kwargs):
        self.received.append({k: kwargs.get(k) for k in ("scales", "momentum_keys", "param_keys")})
        return self.kernel.lion_(params, grads, momenta, **kwargs)


def test_the_fused_path_passes_the_formats_to_the_kernel(monkeypatch):
    try:
        kernel = functional.require_kernel("cpu")
    except ImportError as error:
        pytest.skip(f"the CPU kernel cannot run here: {error}")
    recorder = _Recorder(kernel)
    monkeypatch.setattr(functional, "require_kernel", lambda device_type: recorder)
    plain = torch.zeros(3, requires_grad=True)
    int8 = torch.zeros(300, requires_grad=True)
    rounded = torch.zeros(5, dtype=torch.bfloat16, requires_grad=True)
    opt = Lion([{"params": [plain]}, {"params": [int8, rounded], "momentum_dtype": "int8",
                                      "stochastic_rounding": True}], seed=9, fused=True)
    for step in range(2):
        for p in (plain, int8, rounded):
            p.grad = torch.ones_like(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lion_core.FallbackWarning)
            opt.step()
        first, second = recorder.received[-2:]
        assert first == {"scales": None, "momentum_keys": None, "param_keys": None}  # the plain group

        def key(stream, t):
            return lion_core.step_key(lion_core.derive_seed(9, stream, t), step)

        assert second["scales"][0] is opt.state[int8]["exp_avg_scales"]
        assert second["scales"][1] is opt.state[rounded]["exp_avg_scales"]
        momentum = lion_core.MOMENTUM_STREAM
        assert second["momentum_keys"] == [key(momentum, 1), key(momentum, 2)]
        # a float32 parameter is rounded to nearest: no key; the bfloat16 one has its own
        assert second["param_keys"] == [None, key(lion_core.PARAM_STREAM, 2)]


@pytest.mark.slow
def test_torch_compile_runs_the_formatted_step():
    """torch.compile of a step with both formats: the same bits as eager (foreach, the compile default)."""
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    problem = cases.problem(case, margin=True, shapes=((40, 25), (301,)), steps=2, missing=None)
    results = []
    for compiled in (False, True):
        params = [tensor(x, torch.bfloat16, True) for x in problem.init]
        opt = Lion(params, **format_options(case, "foreach"))
        step = torch.compile(opt.step) if compiled else opt.step
        for grads in problem.grads:
            for p, g in zip(params, grads):
                p.grad = tensor(g, torch.bfloat16)
            step()
        results.append((params, opt))
    (eager, eager_opt), (compiled, compiled_opt) = results
    for i, (p, q) in enumerate(zip(compiled, eager)):
        assert_exact(p, q, what=f"param {i}")
        assert_exact(compiled_opt.state[p]["exp_avg"], eager_opt.state[q]["exp_avg"], what=f"codes {i}")
