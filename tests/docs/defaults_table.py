"""Renders the table of each host's Lion defaults from ``lion_core.defaults``.

``docs/hyperparameters.md`` holds this table between ``<!-- defaults-table:start -->`` and
``<!-- defaults-table:end -->``; ``test_defaults_table`` fails when they differ. After changing
``lion_core.defaults``, regenerate it with::

    python -m tests.docs.defaults_table
"""

from __future__ import annotations

from lion_core import defaults

START = "<!-- defaults-table:start -->"
END = "<!-- defaults-table:end -->"

#: How the docs name each host, and the class whose defaults it describes, by ``lion_core.defaults`` name.
HOSTS = {
    "TORCH": ("PyTorch", "`lion_torch.Lion(params, lr, betas, weight_decay)`; the paper's code, `lion_pytorch.Lion`"),
    "KERAS": ("Keras 3", "`lion_keras.Lion(learning_rate, beta_1, beta_2, weight_decay)`; `keras.optimizers.Lion`"),
    "OPTAX": ("Optax", "`lion_optax.lion(learning_rate, b1, b2, weight_decay=...)`; `optax.lion`"),
}


def host_defaults() -> dict[str, defaults.Defaults]:
    """Every ``Defaults`` tuple that ``lion_core.defaults`` defines, by name, in definition order."""
    return {name: value for name, value in vars(defaults).items() if isinstance(value, defaults.Defaults)}


def _number(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:g}"


def render() -> str:
    """The markdown table, one row per ``Defaults`` of ``lion_core.defaults``."""
    lines = [
        "| host | optimizers | learning rate | beta1 | beta2 | weight decay |",
        "|---|---|---|---|---|---|",
    ]
    for name, value in host_defaults().items():
        host, classes = HOSTS.get(name, (name, "(undocumented host: add it to tests/docs/defaults_table.py)"))
        lines.append(
            f"| {host} | {classes} | {_number(value.lr, 'none: required')} | {value.beta1:g} | {value.beta2:g} "
            f"| {_number(value.weight_decay, 'None (off)')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(START)
    print(render())
    print(END)
