"""Every bad option raises lion_core's error, naming the argument as PyTorch spells it, at construction
and in add_param_group."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lion_torch import Lion

#: The momentum formats Lion accepts by name: the floating dtypes and "int8" (lion_core.MOMENTUM_FORMATS).
MOMENTUM_NAMES = "('float16', 'bfloat16', 'float32', 'float64', 'int8')"

LR_TYPE = "Invalid `lr`: expected a real number, a schedule (callable) or a scalar tensor"
LR_RANGE = "Invalid `lr`: expected 0 <= lr < inf. Received: "
WD_RANGE = "Invalid `weight_decay`: expected 0 <= weight_decay < inf. Received: "
FLAG = "expected True, False or None (choose automatically)"

CASES = [
    ({"lr": -1.0}, ValueError, LR_RANGE + "lr=-1.0"),
    ({"lr": math.nan}, ValueError, LR_RANGE + "lr=nan"),
    ({"lr": math.inf}, ValueError, LR_RANGE + "lr=inf"),
    ({"lr": torch.tensor(-0.5)}, ValueError, LR_RANGE + "lr=tensor(-0.5000)"),
    ({"lr": "0.1"}, TypeError, LR_TYPE + ". Received: lr='0.1' of type str"),
    ({"lr": True}, TypeError, LR_TYPE + ". Received: lr=True of type bool"),
    ({"lr": torch.tensor([0.1, 0.2])}, TypeError, LR_TYPE + " (one element)."),
    ({"lr": lambda step: 0.1}, TypeError,
     "Invalid `lr`: expected a real number or a one-element tensor "
     "(schedule it with torch.optim.lr_scheduler)."),
    ({"betas": (1.0, 0.99)}, ValueError,
     "Invalid `betas[0]`: expected 0 <= betas[0] < 1. Received: betas[0]=1.0"),
    ({"betas": (-0.1, 0.99)}, ValueError,
     "Invalid `betas[0]`: expected 0 <= betas[0] < 1. Received: betas[0]=-0.1"),
    ({"betas": (0.9, 1.5)}, ValueError,
     "Invalid `betas[1]`: expected 0 <= betas[1] < 1. Received: betas[1]=1.5"),
    ({"betas": (0.9, math.nan)}, ValueError,
     "Invalid `betas[1]`: expected 0 <= betas[1] < 1. Received: betas[1]=nan"),
    ({"betas": (0.9, 0.99, 0.999)}, TypeError,
     "Invalid `betas`: expected a pair (beta1, beta2). Received: betas=(0.9, 0.99, 0.999) of type tuple"),
    ({"betas": 0.9}, TypeError,
     "Invalid `betas`: expected a pair (beta1, beta2). Received: betas=0.9 of type float"),
    ({"betas": ("0.9", 0.99)}, TypeError, "Invalid `betas[0]`: expected a real number"),
    ({"weight_decay": -0.1}, ValueError, WD_RANGE + "weight_decay=-0.1"),
    ({"weight_decay": math.inf}, ValueError, WD_RANGE + "weight_decay=inf"),
    ({"weight_decay": math.nan}, ValueError, WD_RANGE + "weight_decay=nan"),
    ({"weight_decay": None}, TypeError, "Invalid `weight_decay`: expected a real number"),
    ({"cautious": 1}, TypeError,
     "Invalid `cautious`: expected True or False. Received: cautious=1 of type int"),
    ({"maximize": "no"}, TypeError,
     "Invalid `maximize`: expected True or False. Received: maximize='no' of type str"),
    ({"decouple_lr": None}, TypeError,
     "Invalid `decouple_lr`: expected True or False. Received: decouple_lr=None of type NoneType"),
    ({"max_lr": 0.1}, RuntimeError,
     "`max_lr` is only used with `decouple_lr=True`. Received: decouple_lr=False, max_lr=0.1"),
    ({"decouple_lr": True, "max_lr": 0.0}, ValueError,
     "Invalid `max_lr`: expected 0 < max_lr < inf. Received: max_lr=0.0"),
    ({"decouple_lr": True, "max_lr": math.inf}, ValueError,
     "Invalid `max_lr`: expected 0 < max_lr < inf. Received: max_lr=inf"),
    ({"momentum_dtype": torch.int32}, ValueError,
     f"Invalid `momentum_dtype`: expected None or one of {MOMENTUM_NAMES}. Received: momentum_dtype='int32'"),
    ({"momentum_dtype": torch.complex64}, ValueError,
     f"Invalid `momentum_dtype`: expected None or one of {MOMENTUM_NAMES}. "
     "Received: momentum_dtype='complex64'"),
    ({"momentum_dtype": 32}, TypeError,
     f"Invalid `momentum_dtype`: expected None or one of {MOMENTUM_NAMES}. "
     "Received: momentum_dtype=32 of type int"),
    ({"foreach": 1}, TypeError, f"Invalid `foreach`: {FLAG}. Received: foreach=1 of type int"),
    ({"fused": "auto"}, TypeError, f"Invalid `fused`: {FLAG}. Received: fused='auto' of type str"),
    ({"foreach": True, "fused": True}, RuntimeError,
     "`foreach=True` and `fused=True` cannot be combined: pick one implementation. "
     "Received: foreach=True, fused=True"),
]


def _ids():
    return [re.sub(r"\W+", "-", str(options))[:60] for options, _, _ in CASES]


@pytest.mark.parametrize(("options", "error", "message"), CASES, ids=_ids())
def test_constructor_refuses(options, error, message):
    with pytest.raises(error, match=re.escape(message)):
        Lion([torch.zeros(2, requires_grad=True)], **options)


@pytest.mark.parametrize(("options", "error", "message"), CASES, ids=_ids())
def test_parameter_group_refuses(options, error, message):
    """The same checks run on each group, in the constructor and in add_param_group, and a refused
    group is not added."""
    with pytest.raises(error, match=re.escape(message)):
        Lion([{"params": [torch.zeros(2, requires_grad=True)]},
              {"params": [torch.zeros(2, requires_grad=True)], **options}])
    opt = Lion([torch.zeros(2, requires_grad=True)])
    with pytest.raises(error, match=re.escape(message)):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], **options})
    assert len(opt.param_groups) == 1


def test_valid_edge_values_are_accepted():
    p = [torch.zeros(2, requires_grad=True)]
    Lion(p, lr=0.0, betas=(0.0, 0.0), weight_decay=0.0)
    Lion(p, lr=torch.tensor([1e-3]), betas=[0.95, 0.98])
    Lion(p, lr=1e-3, decouple_lr=True, max_lr=torch.tensor(1e-2))
    Lion(p, momentum_dtype=torch.bfloat16, foreach=False, fused=False)
