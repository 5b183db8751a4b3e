"""Default hyperparameters: the paper's, and each host's where its own Lion chose differently.

Each adapter takes its defaults from here, so a user who swaps their host's Lion for ours gets the
same numbers, and the documentation's table of defaults is generated from one place.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Defaults(NamedTuple):
    """The default hyperparameters of one host's Lion; ``None`` where the host has none."""

    lr: float | None
    beta1: float
    beta2: float
    weight_decay: float | None


#: The paper's betas, found by the program search (Chen et al. 2023, section 5).
BETA1: Final = 0.9
BETA2: Final = 0.99

#: ``torch``: the paper authors' PyTorch code and lion-pytorch.
TORCH: Final = Defaults(lr=1e-4, beta1=BETA1, beta2=BETA2, weight_decay=0.0)
#: ``keras.optimizers.Lion``: ``weight_decay=None`` means none.
KERAS: Final = Defaults(lr=1e-3, beta1=BETA1, beta2=BETA2, weight_decay=None)
#: ``optax.lion``: the learning rate is required, and weight decay is on by default.
OPTAX: Final = Defaults(lr=None, beta1=BETA1, beta2=BETA2, weight_decay=1e-3)
