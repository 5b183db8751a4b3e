"""Fused Lion kernels for PyTorch: ``cpu_lion`` (CPU tensors) and ``triton_lion`` (CUDA tensors).

Installed as ``lion_kernels`` (the repository folder is ``kernels/``; ``kernels`` is the import name
of Hugging Face's kernel hub). Both modules implement one contract, written once in
``lion_kernels._contract`` (:class:`LionKernel`): ``name``, ``device_type``, ``unavailable_reason``,
``supports`` and ``lion_``, which updates what it supports and hands back the indices of the rest;
:class:`KernelError` is the one exception type. Importing this package imports neither Triton nor
the CPU kernel's binary, and nothing is ever compiled at training time: the CPU kernel is built when
lionkit is installed (docs/kernels.md), the Triton kernel by Triton at its first launch.
"""

from . import cpu_lion, triton_lion
from ._contract import KernelError, LionKernel

__all__ = ["KernelError", "LionKernel", "cpu_lion", "triton_lion"]
