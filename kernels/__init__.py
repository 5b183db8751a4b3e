"""Fused Lion kernels for PyTorch: ``cpu_lion`` (CPU tensors) and ``triton_lion`` (CUDA tensors).

Both modules share one contract (``available``, ``require``, ``supports``, ``supports_all``,
``lion_``) that ``lion_torch``'s fused path dispatches to. Importing this package imports neither
Triton nor a compiler: each kernel is built or compiled on first use.
"""

from . import cpu_lion, triton_lion

__all__ = ["cpu_lion", "triton_lion"]
