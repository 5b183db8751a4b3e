"""A small model actually trains with lion_torch.Lion, and the demo (the README's main job) runs."""

from __future__ import annotations

import re

from lion_torch import demo


def test_mlp_on_digits_trains():
    history = demo.train(epochs=5)
    assert history[-1].loss < 0.25 * history[0].loss, [h.loss for h in history]
    assert history[-1].test_accuracy > 0.9  # ten classes: chance is 0.1


def test_demo_main_prints_one_line_per_epoch(capsys):
    assert demo.main(["--epochs", "2", "--hidden", "32"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch +(\d+) +loss (\d+\.\d+) +train acc (\d\.\d+) +test acc (\d\.\d+)", out, re.M)
    assert [int(e[0]) for e in epochs] == [1, 2]
    assert float(epochs[1][1]) < float(epochs[0][1])
    assert "final: loss" in out
