"""Lion for PyTorch: ``lion_torch.Lion``, a ``torch.optim.Optimizer``, and the functional ``lion``.

The update rule, its variants and their validation live in ``lion_core``; this package holds the
optimizer state and three implementations of one step (single-tensor, foreach, fused kernels), and
``DistributedLion``, the data-parallel Lion that votes on signs instead of averaging gradients.

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
  Liu et al. 2024, "Communication Efficient Distributed Training with Distributed Lion", arXiv:2404.00438.
"""

from ._distributed import DistributedLion
from ._functional import lion
from ._optimizer import Lion

__all__ = ["DistributedLion", "Lion", "lion"]
