r"""``lion_torch.DistributedLion``: data-parallel Lion that votes on signs instead of averaging gradients.

Each rank keeps its own momentum, fed by its own gradient, and sends only the sign of its local
direction (one bit per coordinate); every rank applies the same majority (or average) of the signs.
The vote's float64 NumPy reference is ``lion_core.reference.reference_distributed_lion``.

The collective (see ``docs/distributed.md``): the flat bit vector of all local directions is cut into
one shard per rank; an all-to-all gives each rank every rank's bits of its own shard (1 bit per
coordinate); each rank counts the votes of its shard and an all-gather hands every rank every voted
shard (1 bit for a majority of an odd number of ranks, 2 bits when a tie must be kept, enough bits for
the count with ``vote="average"``). Each rank sends and receives about ``(W - 1) / W * (1 + k) / 8``
bytes per parameter, whatever the world size ``W``, where a ring all-reduce of bf16 gradients moves
``4 (W - 1) / W``.

References:
  Liu et al. 2024, "Communication Efficient Distributed Training with Distributed Lion",
  arXiv:2404.00438.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.optimizer import ParamsT

import lion_core

from ._functional import _as_real, _compute_dtype, _eager_scalar
from ._optimizer import _DEFAULTS, _LR, _WEIGHT_DECAY, Lion, _momentum_dtype_name

__all__ = ["DistributedLion", "VOTES", "vote_bits"]

#: The ways to combine the ranks' signs: the sign of their sum, or their mean.
VOTES: Final = ("majority", "average")

#: Widths (bits per coordinate) a packed code may have: each divides 8, so a byte holds whole codes.
_WIDTHS: Final = (1, 2, 4, 8)


def vote_bits(vote: str, world_size: int) -> int:
    """Bits per coordinate of a voted shard in the all-gather.

    The majority of an odd number of ±1 votes is ±1 (1 bit); an even number may tie, and a tie is
    kept as 0 (2 bits). The average needs the count of +1 votes, ``0..world_size``.
    """
    values = (2 if world_size % 2 else 3) if vote == "majority" else world_size + 1
    for width in _WIDTHS:
        if values <= 1 << width:
            return width
    raise lion_core.invalid_value(
        "world_size", "at most 255 ranks for vote='average' (one byte per count)", world_size
    )


def _all_gather(output: Tensor, input: Tensor, group: dist.ProcessGroup | None) -> None:
    """Gathers every rank's ``input`` into ``output``, with the name the installed torch prefers."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch < 2.13
    gather(output, input, group=group)


def _pack(codes: Tensor, width: int) -> Tensor:
    """Packs unsigned codes below ``2**width`` into bytes, ``8 // width`` per byte, lowest first."""
    per_byte = 8 // width
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=codes.device)
    return (codes.to(torch.uint8).view(-1, per_byte) << shifts).sum(dim=1, dtype=torch.uint8)


def _unpack(packed: Tensor, width: int) -> Tensor:
    """Inverts ``_pack``: the codes of ``packed`` (uint8, last dimension bytes), flattened per row."""
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & ((1 << width) - 1)
    return codes.flatten(start_dim=-2)


class DistributedLion(Lion):
    r"""Data-parallel Lion with a sign vote instead of a gradient all-reduce (Liu et al. 2024).

    Run it without ``DistributedDataParallel``: each rank computes the gradient of its own batch,
    and ``step`` exchanges one bit per coordinate. With :math:`W` ranks, rank :math:`r`'s gradient
    :math:`g_r` and momentum :math:`m_r`:

    .. math::
       \begin{aligned}
            &c_r \leftarrow \beta_1 m_r + (1 - \beta_1) g_r, \qquad
                s_r \leftarrow \operatorname{sign}(c_r) \in \{-1, +1\} \\
            &u \leftarrow \operatorname{sign}\Big(\sum_r s_r\Big) \quad
                \text{(majority; 0 on a tie)}, \qquad
                u \leftarrow \tfrac{1}{W} \sum_r s_r \quad \text{(average)} \\
            &\theta \leftarrow d\,\theta - \eta u, \qquad
                m_r \leftarrow \beta_2 m_r + (1 - \beta_2) g_r
       \end{aligned}

    with :math:`d = 1 - \eta\lambda` as in ``Lion``. Every rank applies the same :math:`u` to the
    same parameters, so the parameters stay bit-identical across ranks; the momenta differ.

    Decisions the one-bit exchange forces:

    * **A local direction of exactly 0** (:math:`c_r = 0`, e.g. a coordinate that no sample of the
      rank's batch touched, at the first step) cannot travel as one bit. It becomes :math:`+1` on
      ranks where ``rank + t`` is even and :math:`-1` where it is odd (``t`` counts the group's
      steps from 0). Zeros of two ranks cancel, so a coordinate that is 0 on every rank does not
      move with an even world size; with an odd one, it moves by :math:`\pm\eta` in alternate
      steps, a bounded oscillation instead of a drift.
    * **A non-finite** :math:`c_r` (NaN or infinite gradient or momentum) on any rank makes the whole
      step's update NaN on every rank, for every parameter stepped: the divergence surfaces as it
      does in ``Lion`` rather than hiding behind a finite sign (a one-byte flag per shard carries it).

    Args:
      params: the parameters, or dicts defining parameter groups, in the same order on every rank.
      lr: the learning rate :math:`\eta`, a float or a one-element tensor (default: 1e-4).
      betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.99)).
      weight_decay: decoupled weight decay :math:`\lambda` (default: 0.0).
      decouple_lr: fully decoupled weight decay, as in ``Lion`` (default: False).
      max_lr: :math:`\eta_\text{max}` for ``decouple_lr``, as in ``Lion`` (default: None).
      maximize: ascend the objective (default: False).
      momentum_dtype: the dtype of each rank's ``exp_avg``, as in ``Lion`` (default: None).
      process_group: the ranks that vote (default: None, the default process group). Parameters are
        broadcast from its first rank at construction, so every rank starts equal.
      vote: ``"majority"`` (the sign of the sum, the paper's MaVo) or ``"average"`` (the mean of the
        signs, the paper's AvgVo) (default: "majority").

    Raises:
      ValueError, TypeError: an option is out of range or of the wrong type (text from
        ``lion_core``); ``vote`` is not one of ``VOTES``; parameters span several devices.
      RuntimeError: no process group is initialized.

    Notes:
      Every rank must step the same parameters (those with a gradient), as DDP requires. The state
      holds each rank's own momentum, and each group records the ``world_size`` it was trained with:
      loading a state dict saved with another world size raises, since a rank's momentum has no
      counterpart there. ``cautious`` is not offered: its mask reads the local gradient, which would
      make the ranks' updates differ. Not for ``DTensor`` (FSDP2) parameters, which are already
      sharded: use ``Lion`` there. With ``torch.amp.GradScaler`` (float16), each rank checks only
      its own gradients for infs, so one rank may skip a step that the others take and the vote
      waits for it forever: train in bfloat16 without a scaler.

    Example:
      >>> import torch
      >>> import torch.distributed as dist
      >>> from lion_torch import DistributedLion
      >>> store = dist.HashStore()
      >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
      >>> model = torch.nn.Linear(4, 1)
      >>> opt = DistributedLion(model.parameters(), lr=1e-3)
      >>> model(torch.ones(8, 4)).pow(2).mean().backward()
      >>> opt.step()
      >>> dist.destroy_process_group()

    References:
      Liu et al. 2024, "Communication Efficient Distributed Training with Distributed Lion",
      arXiv:2404.00438.
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """

    #: ``torch.amp.GradScaler`` must unscale the gradients itself: ``step`` reads them as they are.
    _step_supports_amp_scaling = False

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = _LR,
        betas: tuple[float | Tensor, float | Tensor] = (_DEFAULTS.beta1, _DEFAULTS.beta2),
        weight_decay: float = _WEIGHT_DECAY,
        *,
        decouple_lr: bool = False,
        max_lr: float | Tensor | None = None,
        maximize: bool = False,
        momentum_dtype: torch.dtype | None = None,
        process_group: dist.ProcessGroup | None = None,
        vote: str = "majority",
    ) -> None:
        lion_core.check_choice(vote, VOTES, "vote")
        if not dist.is_available() or not dist.is_initialized():
            raise lion_core.incompatible(
                "DistributedLion needs an initialized process group: call "
                "torch.distributed.init_process_group first. Received: no process group"
            )
        self._process_group = process_group
        self._world_size = dist.get_world_size(process_group)
        self._rank = dist.get_rank(process_group)
        self._vote = vote
        self._width = vote_bits(vote, self._world_size)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            decouple_lr=decouple_lr,
            max_lr=max_lr,
            maximize=maximize,
            momentum_dtype=momentum_dtype,
        )
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) > 1:
            raise lion_core.invalid_value(
                "params",
                "parameters on one device (the vote packs them into one buffer)",
                sorted(map(str, devices)),
            )
        source = dist.get_global_rank(process_group or dist.group.WORLD, 0)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    dist.broadcast(p.data, src=source, group=process_group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a parameter group; it records the world size and counts its steps from 0."""
        for name in ("cautious", "foreach", "fused"):
            if param_group.get(name) not in (None, False):
                raise lion_core.incompatible(
                    f"DistributedLion has no `{name}` option (see its Notes). "
                    f"Received: {name}={param_group[name]!r}"
                )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # The vote reads each rank's float momentum; the state formats are Lion's alone (so far).
        formats = {"momentum_dtype": _momentum_dtype_name(group["momentum_dtype"]),
                   "stochastic_rounding": group["stochastic_rounding"]}
        if formats["momentum_dtype"] == "int8" or formats["stochastic_rounding"] is True:
            self.param_groups.pop()
            received = ", ".join(f"{name}={value!r}" for name, value in formats.items())
            raise lion_core.incompatible(
                "DistributedLion has no 8-bit momentum or stochastic rounding (lion_torch.Lion has "
                f"them). Received: {received}"
            )
        group.setdefault("world_size", self._world_size)
        group.setdefault("vote_steps", 0)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads this rank's state; see ``Lion.load_state_dict``.

        Raises:
          ValueError: the state was saved with another world size (each rank's momentum belongs to
            its rank), besides ``Lion.load_state_dict``'s errors.
        """
        for i, saved in enumerate(state_dict["param_groups"]):
            if "world_size" in saved and saved["world_size"] != self._world_size:
                raise lion_core.invalid_value(
                    f"state_dict['param_groups'][{i}]['world_size']",
                    f"{self._world_size}, this process group's size (a state dict of DistributedLion "
                    "holds one rank's momenta; load it with as many ranks as saved it)",
                    saved["world_size"],
                )
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimization step: a vote over all ranks, the same update on each.

        Args:
          closure: a callable that re-evaluates the model and returns the loss (default: None).

        Returns:
          The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor]]] = []
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            self._init_group(group, params, grads, exp_avgs)
            if params:
                groups.append((group, _as_real(params), _as_real(grads), _as_real(exp_avgs)))
        if not groups:
            return loss
        votes = self._exchange([self._local_signs(*entry) for entry in groups])
        start = 0
        for group, params, grads, exp_avgs in groups:
            start = self._apply(group, params, grads, exp_avgs, votes, start)
            group["vote_steps"] += 1
        return loss

    def _local_signs(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """This rank's direction bits (True for +1) of one group, flat, and whether any c is non-finite."""
        beta1 = _eager_scalar(group["betas"][0])
        zero_is_plus = (self._rank + group["vote_steps"]) % 2 == 0
        bits, nonfinite = [], []
        for p, g, m in zip(params, grads, exp_avgs):
            dtype = _compute_dtype(p.dtype, g.dtype, m.dtype)
            g = g.to(dtype)
            if group["maximize"]:
                g = -g
            c = lion_core.interpolate(m.to(dtype), g, beta1).reshape(-1)
            bits.append(c >= 0 if zero_is_plus else c > 0)
            nonfinite.append((~torch.isfinite(c)).any().reshape(1))
        return torch.cat(bits), torch.cat(nonfinite).any()

    def _exchange(self, local: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """The vote of every coordinate (int8 count of +1 votes per coordinate), the same on every rank.

        A count of -1 marks a non-finite step.
        """
        world, width = self._world_size, self._width
        bits = torch.cat([b for b, _ in local])
        n = bits.numel()
        shard = -(-n // (8 * world)) * 8  # coordinates per rank's shard, whole bytes at every width
        padded = torch.zeros(shard * world, dtype=torch.uint8, device=bits.device)
        padded[:n] = bits
        flag = torch.stack([f for _, f in local]).any().to(torch.uint8)
        # Leg 1: rank j receives every rank's bits of shard j, plus each sender's non-finite flag.
        send = torch.cat([_pack(padded, 1).view(world, -1), flag.expand(world, 1)], dim=1)
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=self._process_group)
        counts = _unpack(received[:, :-1], 1).sum(dim=0, dtype=torch.int16)  # +1 votes per coordinate
        codes = torch.sign(2 * counts - world) + 1 if self._vote == "majority" else counts
        if width == 1:  # odd world, majority: no tie, the code is 0 or 2
            codes = codes // 2
        voted_flag = received[:, -1:].amax().reshape(1)
        # Leg 2: every rank receives every voted shard.
        mine = torch.cat([_pack(codes, width), voted_flag])
        gathered = torch.empty(world * mine.numel(), dtype=torch.uint8, device=mine.device)
        _all_gather(gathered, mine, self._process_group)
        gathered = gathered.view(world, -1)
        codes = _unpack(gathered[:, :-1], width).reshape(-1)[:n]
        if bool(gathered[:, -1].any()):
            return torch.full((n,), -1, dtype=torch.int16, device=bits.device)
        if self._vote == "majority":
            codes = codes * 2 if width == 1 else codes
            # majority codes 0, 1, 2 stand for -1, 0, +1: as counts of +1 votes, 0, W/2, W
            return torch.where(codes == 1, world // 2, codes // 2 * world).to(torch.int16)
        return codes.to(torch.int16)

    def _apply(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        counts: Tensor,
        start: int,
    ) -> int:
        """Applies the voted update to one group's tensors; returns the offset of the next group."""
        lr = _eager_scalar(group["lr"])
        beta2 = _eager_scalar(group["betas"][1])
        max_lr = group["max_lr"] if group["decouple_lr"] else None
        decay = lion_core.decay_factor(lr, _eager_scalar(group["weight_decay"]), _eager_scalar(max_lr))
        world = self._world_size
        for p, g, m in zip(params, grads, exp_avgs):
            n = p.numel()
            count = counts[start : start + n].view(p.shape)
            start += n
            dtype = _compute_dtype(p.dtype, g.dtype, m.dtype)
            balance = (2 * count - world).to(dtype)  # sum of the ranks' signs
            update = torch.sign(balance) if self._vote == "majority" else balance / world
            update = torch.where(count < 0, torch.nan, update)  # a non-finite step
            p.copy_(p.to(dtype) * decay - lr * update)
            g = g.to(dtype)
            if group["maximize"]:
                g = -g
            m.copy_(lion_core.next_momentum(m.to(dtype), g, beta2=beta2))
        return start
