"""compile: auto on a CPU is decided by timing both steps on the machine that runs."""

from __future__ import annotations

import time

import torch

from convnets.train import CompileTrial


def _fake(delay: float, calls: list, name: str):
    def step(xb, yb, lr):
        calls.append(name)
        time.sleep(delay)
        return torch.tensor(1.0), torch.tensor(0)
    return step


def test_the_faster_step_trains_the_rest_of_the_run():
    calls: list[str] = []
    trial = CompileTrial(_fake(0.02, calls, "compiled"), _fake(0.0, calls, "eager"))
    n_trial = CompileTrial.WARMUP + 2 * CompileTrial.STEPS
    for _ in range(n_trial + 4):
        trial.step(None, None, 0.1)
    assert trial.choice == "eager"
    assert calls[:CompileTrial.WARMUP] == ["compiled"] * CompileTrial.WARMUP  # compiling
    assert calls[CompileTrial.WARMUP:n_trial].count("eager") == CompileTrial.STEPS
    assert calls[n_trial:] == ["eager"] * 4
    assert trial.summary().startswith("eager (compiled ") and "ms/step" in trial.summary()


def test_a_resumed_run_keeps_its_choice_without_a_new_trial():
    calls: list[str] = []
    trial = CompileTrial(_fake(0.0, calls, "compiled"), _fake(0.02, calls, "eager"),
                         choice="eager")
    for _ in range(3):
        trial.step(None, None, 0.1)
    assert calls == ["eager"] * 3  # the recorded choice, although compiled is faster here
    assert "chosen before the run was resumed" in trial.summary()
