"""A small model trains with lion_torch.Lion, and its demo (lion_cli.demos.torch) runs."""

from __future__ import annotations

import re

from lion_cli.demos import torch as demo


def test_mlp_on_digits_trains():
    history = demo.run_recipe("lion", epochs=6)
    assert history.losses[-1] < 0.25 * history.losses[0], history.losses
    assert history.accuracy > 0.9  # ten classes: chance is 0.1


def test_demo_main_prints_one_line_per_epoch(capsys):
    assert demo.main(["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch +(\d+) +loss (\d+\.\d+)$", out, re.M)
    assert [int(e[0]) for e in epochs] == [1, 2]
    assert float(epochs[1][1]) < float(epochs[0][1])
    assert re.search(r"^test accuracy \d\.\d{3}", out, re.M)
