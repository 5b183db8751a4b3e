"""What only the CPU kernel (lion_kernels.cpu_lion) has: its binary, threads, chunks, bf16 budgets.

The contract that both kernels share (the case table bit for bit, hand-back, aliasing, subclasses,
cautious_reduce, found_inf) is tested once, in test_contract.py. Here: chunk boundaries and thread
counts, bfloat16 against the float64 reference within stated budgets, and the faults of a compiled
binary (missing, truncated, corrupt, built for something else) and of many processes or threads
loading it at once: each gives a KernelError naming the remedy, never a crash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lion_kernels import KernelError, cpu_lion
from lion_core.reference import reference_lion, reference_step
from tests.support import assert_close, assert_exact, assert_within_budget, margin_gradient


# Only a missing binary skips (lionkit installed without a C compiler), with the reason; a binary
# that does not load is a failure.
pytestmark = [
    pytest.mark.skipif(cpu_lion.unavailable_reason() is not None, reason=str(cpu_lion.unavailable_reason())),
    # The float64 reference takes the mean of an empty cautious mask for zero-size arrays.
    pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

CHUNK = cpu_lion._CHUNK
# Zero-size, one element, odd sizes, a 0-d tensor, and one that spans several chunks of the kernel's
# index space and straddles chunk boundaries with its neighbours.
SHAPES = [(0,), (1,), (1023,), (4097,), (), (3 * CHUNK + 17,), (31, 33)]  # chunk boundaries
STEPS = 7

CONFIGS = {
    "plain": dict(weight_decay=0.0),
    "weight_decay": dict(weight_decay=0.1),
    "decouple_lr": dict(weight_decay=0.1, max_lr=3e-2),
    "cautious": dict(weight_decay=0.1, cautious=True),
    "maximize": dict(weight_decay=0.1, maximize=True),
    "everything": dict(weight_decay=0.05, max_lr=2e-2, cautious=True, maximize=True),
}
LRS = [1e-2, 2e-2, 5e-3, 1e-2, 0.0, 7e-3, 1e-2]  # a schedule, with a step at lr = 0
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _problem(rng: np.random.Generator, shapes=SHAPES, steps=STEPS):
    params = [rng.normal(size=shape) for shape in shapes]
    grads = []
    for step in range(steps):
        step_grads = []
        for index, shape in enumerate(shapes):
            g = rng.normal(size=shape)
            if g.size > 8:
                g.reshape(-1)[:4] = 0.0  # c = 0 at the first step: sign(0) = 0
            step_grads.append(g)
        if step == 3:
            step_grads[2] = None  # no gradient: the optimizer leaves that parameter alone
        grads.append(step_grads)
    return params, grads


def _run_kernel(params, grads, dtype, *, momentum_dtype=None, lr=LRS, **config):
    tdtype = TORCH_DTYPE.get(dtype, dtype)
    p = [torch.tensor(np.asarray(x, dtype=np.float64)).to(tdtype) for x in params]
    m = [torch.zeros(x.shape, dtype=momentum_dtype or tdtype) for x in p]
    max_lr = config.pop("max_lr", None)
    for step, step_grads in enumerate(grads):
        live = [i for i, g in enumerate(step_grads) if g is not None]
        g = [torch.tensor(np.asarray(step_grads[i], dtype=np.float64)).to(tdtype) for i in live]
        cpu_lion.lion_(
            [p[i] for i in live],
            g,
            [m[i] for i in live],
            lr=lr[step] if isinstance(lr, list) else lr,
            beta1=config.get("beta1", 0.9),
            beta2=config.get("beta2", 0.99),
            weight_decay=config.get("weight_decay", 0.0),
            max_lr=max_lr,
            cautious=config.get("cautious", False),
            maximize=config.get("maximize", False),
        )
    return p, m


@pytest.mark.parametrize("name", ["cautious", "everything"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_tensors_across_chunk_boundaries_bit_for_bit(name, dtype):
    """A tensor spanning several chunks of the kernel's index space, and small ones sharing a chunk."""
    rng = np.random.default_rng(list(CONFIGS).index(name))
    params, grads = _problem(rng)
    # The reference starts from the same rounded values the kernel starts from.
    params = [np.asarray(x, dtype=dtype) for x in params]
    grads = [[None if g is None else np.asarray(g, dtype=dtype) for g in step] for step in grads]
    config = CONFIGS[name]
    p, m = _run_kernel(params, grads, dtype, **config)
    expected = reference_lion(params, grads, lr=LRS, dtype=dtype, **config)
    for i in range(len(SHAPES)):
        assert p[i].dtype == TORCH_DTYPE[dtype] and p[i].shape == SHAPES[i]
        assert_exact(p[i], expected.params[i], what=f"param {i} {SHAPES[i]}")
        assert_exact(m[i], expected.momentum[i], what=f"momentum {i} {SHAPES[i]}")


def test_tensor_learning_rate_equals_float():
    rng = np.random.default_rng(7)
    params, grads = _problem(rng, steps=2)
    grads = [[g for g in step] for step in grads]
    by_float = _run_kernel(params, grads, np.float32, lr=3e-3, weight_decay=0.1)
    lr = torch.tensor(3e-3, dtype=torch.float64)
    by_tensor = _run_kernel(params, grads, np.float32, lr=lr, weight_decay=0.1)
    for a, b in zip(by_float[0] + by_float[1], by_tensor[0] + by_tensor[1]):
        assert_exact(b, a)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_the_result(threads):
    rng = np.random.default_rng(8)
    params, grads = _problem(rng, steps=2)
    params = [x.astype(np.float32) for x in params]
    grads = [[None if g is None else g.astype(np.float32) for g in step] for step in grads]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p, m = _run_kernel(params, grads, np.float32, cautious=True, weight_decay=0.1)
    finally:
        torch.set_num_threads(before)
    expected = reference_lion(params, grads, lr=LRS, cautious=True, weight_decay=0.1, dtype=np.float32)
    for i in range(len(SHAPES)):
        assert_exact(p[i], expected.params[i], what=f"param {i}")
        assert_exact(m[i], expected.momentum[i], what=f"momentum {i}")


def _bf16(x: np.ndarray) -> np.ndarray:
    """Rounds float64 values to bfloat16 (to nearest even, via float32) and returns them as float64."""
    return torch.tensor(np.asarray(x, dtype=np.float32)).to(torch.bfloat16).double().numpy()


def test_bfloat16_is_float32_reference_then_storage_rounding():
    """lion_core's policy: compute in float32, round the parameter once to bfloat16 when stored."""
    rng = np.random.default_rng(11)
    shapes = [(4097,), (1,), (), (2 * CHUNK + 5,)]
    p = [torch.tensor(rng.normal(size=s)).to(torch.bfloat16) for s in shapes]
    m = [torch.tensor(rng.normal(size=s) * 0.1, dtype=torch.float32) for s in shapes]
    for step in range(5):
        g = [torch.tensor(rng.normal(size=s)).to(torch.bfloat16) for s in shapes]
        if step == 2:
            g[0][:7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0, 0, 0, 0])
        expected = [
            reference_step(
                pi.float().numpy(), gi.float().numpy(), mi.numpy(),
                lr=0.03, weight_decay=0.2, cautious=step % 2 == 1, dtype=np.float32,
            )
            for pi, gi, mi in zip(p, g, m)
        ]
        cpu_lion.lion_(p, g, m, lr=0.03, beta1=0.9, beta2=0.99, weight_decay=0.2, max_lr=None,
                       cautious=step % 2 == 1, maximize=False)
        for i, (new_p, new_m) in enumerate(expected):
            assert p[i].dtype == torch.bfloat16 and m[i].dtype == torch.float32
            stored = torch.from_numpy(np.asarray(new_p)).to(torch.bfloat16)
            assert_exact(p[i], stored, what=f"param {i} step {step}")
            assert_exact(m[i], new_m, what=f"momentum {i} step {step}")


def test_bfloat16_margin_elementwise():
    """With |c| >= 0.05 every path agrees on the sign: one bf16 rounding of the parameter apart."""
    rng = np.random.default_rng(12)
    n = 2 * CHUNK + 3
    p = torch.tensor(rng.normal(size=n)).to(torch.bfloat16)
    m = torch.tensor(rng.normal(size=n) * 0.5, dtype=torch.float32)
    for _ in range(5):
        g = torch.tensor(margin_gradient(rng, m.double().numpy(), beta1=0.9)).to(torch.bfloat16)
        # bf16 rounding of g moves c by at most (1 - beta1) * |g| * 2**-9, far below the margin.
        ref_p, ref_m = reference_step(
            p.double().numpy(), g.double().numpy(), m.double().numpy(), lr=1e-2, weight_decay=0.1
        )
        cpu_lion.lion_([p], [g], [m], lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None,
                       cautious=False, maximize=False)
        # bf16 keeps 8 significant bits: one rounding is within 2**-9 relative.
        assert_close(p, ref_p, rtol=2**-8, atol=1e-30, what="bf16 param")
        assert_close(m, ref_m, rtol=1e-6, atol=1e-7, what="fp32 momentum")


def test_bfloat16_trajectory_within_budget():
    """200 steps against the float64 reference with the same storage rounding each step.

    Budget: the float32 arithmetic differs from float64 in the last bits of the momentum, which
    can flip sign(c) where c is near zero (a 2*lr move) and, after bf16 rounding, shift a parameter
    by one bf16 ulp. At most 2% of parameters may differ by more than one ulp (2**-7 relative)
    plus 2*lr, and the momentum must stay within 1e-4 relative on 99% of entries.
    """
    rng = np.random.default_rng(13)
    n, lr = 20_000, 1e-2
    p = torch.tensor(rng.normal(size=n)).to(torch.bfloat16)
    m = torch.zeros(n, dtype=torch.float32)
    ref_p, ref_m = p.double().numpy(), np.zeros(n)
    for _ in range(200):
        g = torch.tensor(rng.normal(size=n)).to(torch.bfloat16)
        cpu_lion.lion_([p], [g], [m], lr=lr, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None,
                       cautious=False, maximize=False)
        ref_p, ref_m = reference_step(ref_p, g.double().numpy(), ref_m, lr=lr, weight_decay=0.1)
        ref_p, ref_m = _bf16(ref_p), ref_m.astype(np.float32).astype(np.float64)
    assert_within_budget(p, ref_p, atol=2 * lr, rtol=2**-7, max_fraction=0.02, what="bf16 param")
    assert_within_budget(m, ref_m, atol=1e-6, rtol=1e-4, max_fraction=0.01, what="fp32 momentum")


def test_many_tensors_of_every_kind_in_one_call():
    """400 tensors, three dtypes interleaved: each kind goes to its own loop, all in one lion_ call."""
    rng = np.random.default_rng(15)
    kinds = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
             (torch.bfloat16, torch.bfloat16)]
    sizes = rng.integers(0, 3000, size=400)
    p, g, m, expected = [], [], [], []
    for i, size in enumerate(sizes):
        p_dtype, m_dtype = kinds[i % len(kinds)]
        pi = torch.tensor(rng.normal(size=size)).to(p_dtype)
        gi = torch.tensor(rng.normal(size=size)).to(p_dtype)
        mi = torch.tensor(rng.normal(size=size)).to(m_dtype)
        wide = torch.float64 if p_dtype == torch.float64 else torch.float32
        new_p, new_m = reference_step(
            pi.to(wide).numpy(), gi.to(wide).numpy(), mi.to(wide).numpy(), lr=0.01, weight_decay=0.1,
            dtype=wide == torch.float64 and np.float64 or np.float32,
        )
        expected.append((torch.from_numpy(np.asarray(new_p)).to(p_dtype),
                         torch.from_numpy(np.asarray(new_m)).to(m_dtype)))
        p.append(pi), g.append(gi), m.append(mi)
    versions = [t._version for t in p + m]
    g_before = [x.clone() for x in g]
    left = cpu_lion.lion_(p, g, m, lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None,
                          cautious=False, maximize=False)
    assert left == []
    for i, (new_p, new_m) in enumerate(expected):
        assert_exact(p[i], new_p, what=f"param {i} ({p[i].dtype})")
        assert_exact(m[i], new_m, what=f"momentum {i}")
        assert_exact(g[i], g_before[i], what=f"gradient {i}")
    # The kernel writes through raw pointers; autograd must still see an in-place change.
    assert all(t._version > v for t, v in zip(p + m, versions))




# --- the binary: where it is, what it is built for, and what happens when it is damaged ----------

_STEP = """
import hashlib, sys, torch
from lion_kernels import KernelError, cpu_lion
print("reason:", cpu_lion.unavailable_reason())
print("loaded before lion_:", "lion_kernels._cpu_lion" in sys.modules)
p = torch.linspace(-1, 1, 1001)
try:
    left = cpu_lion.lion_([p], [torch.cos(p * 7)], [torch.zeros(1001)], lr=0.1, beta1=0.9, beta2=0.99,
                          weight_decay=0.1, max_lr=None, cautious=True, maximize=False)
    print("result:", left, hashlib.sha256(p.numpy().tobytes()).hexdigest())
except KernelError as error:
    print("KernelError:", error)
print("reason after:", cpu_lion.unavailable_reason())
"""


def _python(code: str, *, path: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([str(path), root] if path else [root])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=path or root)


def _package_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the installed package, binary included, that a test may damage; and its binary."""
    source = Path(cpu_lion.__file__).resolve().parent
    target = tmp_path / "lion_kernels"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    binary = Path(cpu_lion._binary()).name  # type: ignore[arg-type]
    return tmp_path, target / binary


def test_the_binary_is_the_installed_extension_and_loads_lazily():
    out = _python(_STEP)
    assert out.returncode == 0, out.stderr
    assert "reason: None" in out.stdout and "loaded before lion_: False" in out.stdout
    assert "result: []" in out.stdout


def test_the_binary_dispatches_on_the_instruction_set():
    """One binary for every x86-64 CPU: AVX-512 (x86-64-v4 from GCC 12, AVX-512F before), AVX2 and
    baseline copies of the loops (the state-format loops too), picked by an ifunc resolver when the
    library is loaded; never -march=native."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"target_clones dispatch is built on x86-64 only; this is {platform.machine()}")
    data = Path(cpu_lion._binary()).read_bytes()  # type: ignore[arg-type]
    for loop in (b"segment_f32", b"stored_segment_13"):
        assert loop + b".arch_x86_64_v4" in data or loop + b".avx512f" in data, f"no AVX-512 copy of {loop!r}"
        for clone in (loop + b".avx2", loop + b".default"):
            assert clone in data, f"{clone!r} is missing from the binary"


def test_no_binary_names_the_cause_and_lion_raises(monkeypatch):
    """Installed without a C compiler: no extension. The reason says so; lion_ raises KernelError."""
    monkeypatch.setattr(cpu_lion, "EXTENSION", "lion_kernels._no_such_extension")
    monkeypatch.setattr(cpu_lion, "_missing", False)
    monkeypatch.setattr(cpu_lion, "_library", cpu_lion._Library())
    reason = cpu_lion.unavailable_reason()
    assert reason is not None and "lion_kernels._no_such_extension is not installed" in reason
    assert "reinstall lionkit with a C compiler present" in reason
    p = torch.ones(3)
    with pytest.raises(KernelError, match="is not installed"):
        cpu_lion.lion_([p], [torch.ones(3)], [torch.zeros(3)], lr=0.1, beta1=0.9, beta2=0.99,
                       weight_decay=0.0, max_lr=None, cautious=False, maximize=False)
    assert torch.equal(p, torch.ones(3))


def _damage(binary: Path, how: str) -> None:
    data = binary.read_bytes()
    if how == "truncated":  # a killed copy: dlopen of this file would die of SIGBUS
        binary.write_bytes(data[: len(data) // 3])
    elif how == "overwritten":  # bytes changed in the middle
        middle = len(data) // 2
        binary.write_bytes(data[:middle] + bytes(64) + data[middle + 64 :])
    elif how == "not_a_library":  # a file that matches its recorded checksum but is no shared object
        binary.write_bytes(b"\x7fELF this is not a shared library" * 100)
        checksum = binary.with_name("_cpu_lion.sha256")
        checksum.write_text(hashlib.sha256(binary.read_bytes()).hexdigest() + "\n")
    elif how == "no_checksum":
        binary.with_name("_cpu_lion.sha256").unlink()


@pytest.mark.parametrize(
    "how, message",
    [("truncated", "is damaged"), ("overwritten", "is damaged"), ("not_a_library", "does not load"),
     ("no_checksum", "cannot be verified")],
)
def test_a_damaged_binary_raises_kernel_error_and_never_crashes(tmp_path, how, message):
    root, binary = _package_copy(tmp_path)
    _damage(binary, how)
    out = _python(_STEP, path=root)
    assert out.returncode == 0, f"the process died (rc {out.returncode}):\n{out.stderr}"
    assert "reason: None" in out.stdout  # pure: nothing was loaded to find out
    assert "KernelError: the CPU kernel's binary" in out.stdout and message in out.stdout, out.stdout
    assert "reinstall lionkit" in out.stdout
    assert f"reason after: the CPU kernel's binary {binary}" in out.stdout  # now it knows


@pytest.mark.slow
def test_eight_processes_starting_at_once_all_load_and_agree():
    processes = [
        subprocess.Popen([sys.executable, "-c", _STEP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=Path(__file__).resolve().parents[2])
        for _ in range(8)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, [err for _, err in outputs]
    results = {line for out, _ in outputs for line in out.splitlines() if line.startswith("result:")}
    assert len(results) == 1 and next(iter(results)).startswith("result: []"), results


_THREADS = """
import threading, torch
from lion_kernels import KernelError, cpu_lion
barrier, out, errors = threading.Barrier(2), {}, []
def work(k):
    p = torch.linspace(-1, 1, 5000)
    barrier.wait()
    try:
        out[k] = (cpu_lion.lion_([p], [torch.sin(p * 5)], [torch.zeros(5000)], lr=0.1, beta1=0.9,
                                 beta2=0.99, weight_decay=0.0, max_lr=None, cautious=False,
                                 maximize=False), p)
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors, out[0][0], out[1][0], torch.equal(out[0][1], out[1][1]))
"""


def test_two_threads_calling_lion_first_in_a_fresh_process():
    """The first call loads the binary: two threads at once, one loads, both step."""
    out = _python(_THREADS)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] [] [] True"


_POOL = """
import os, threading, torch
from lion_kernels import cpu_lion
SIZES = [3 * cpu_lion._CHUNK + 17, 1023, 2 * cpu_lion._CHUNK]  # several chunks: the helpers take some
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None, maximize=False)

def problem(seed):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(n, generator=g) for n in SIZES], [torch.randn(n, generator=g) for n in SIZES],
            [torch.zeros(n) for n in SIZES])

def run(seed, steps=12):
    p, g, m = problem(seed)
    for step in range(steps):
        assert cpu_lion.lion_(p, g, m, cautious=step % 2 == 1, **HYPER) == []
    return p + m

torch.set_num_threads(1)
expected = {seed: run(seed) for seed in range(4)}  # the calling thread alone
torch.set_num_threads(3)
same = lambda seed, got: all(torch.equal(a, b) for a, b in zip(expected[seed], got))
print("helpers:", same(0, run(0)))
got, barrier = {}, threading.Barrier(4)
def work(seed):
    barrier.wait()
    got[seed] = run(seed)
threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("threads at once:", all(same(seed, got[seed]) for seed in range(4)))
p, g, m = problem(1)  # made before the fork: torch's own OpenMP pool does not survive a fork
pid = os.fork()
if pid == 0:  # the child has none of the parent's helper threads: the kernel starts its own
    import faulthandler, sys
    faulthandler.dump_traceback_later(60, exit=True)
    for step in range(12):
        cpu_lion.lion_(p, g, m, cautious=step % 2 == 1, **HYPER)
    equal = all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(expected[1], p + m))
    os._exit(0 if equal else 1)
_, status = os.waitpid(pid, 0)
print("forked child:", os.waitstatus_to_exitcode(status) == 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork does not exist on this platform")
def test_helper_threads_concurrent_calls_and_a_forked_child_match_one_thread():
    """The kernel's own helper threads (``parallel_chunks`` in the C source): the result equals the
    calling thread's alone, bit for bit, also when four Python threads step at once (one call uses
    the helpers, the others run alone) and in a child forked after the helpers started (it starts
    its own; a deadlock would time out)."""
    out = _python(_POOL, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["helpers: True", "threads at once: True", "forked child: True"], out
