"""How long a cycle's training will take, said once its first steps are timed.

Why from the training's own first steps: timing extra throwaway steps would cost as much
again and change nothing the run keeps; the first ``MEASURED`` steps after a warm-up step
(which pays for lazy initialisation) are the training itself, so the estimate is free and
the run stays bit-identical with or without it.

Why a hint: a first model on a laptop CPU can take an hour at the recipe's step count
(issue 29). When the estimate is long on a CPU the line says which ``--set`` brings it to
about ``TARGET_S``, and whether this run may still take it (a run's training keys are fixed
once a cycle is trained, ``balseg.config.check_resumable``). On a CPU shared with other
work, OpenMP threads that wait for each other make 2 threads slower than 1 (issue 29: 14 s
against 4 s a step at 240x320, batch 8, beside another training); the hint says so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

MEASURED = 3  # steps timed after the warm-up step
LONG_S = 10 * 60  # on a CPU, longer than this gets a hint
TARGET_S = 8 * 60  # what the hinted step count aims at

Callback = Callable[[int, torch.nn.Module], None]


def fmt_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 2 * 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def device_text(device: torch.device | str) -> str:
    """'cpu, 2 threads' or 'cuda, NVIDIA H200': what the estimate holds for."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda, {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu, {n} thread{'s' if n != 1 else ''}"
    return device.type


class TrainEstimate:
    """A training callback that times steps 2..1+``MEASURED`` and then writes one line:
    ``cycle 0: 300 steps, about 12 min on this machine (cpu, 2 threads)``, with a hint when
    that is long on a CPU. ``key`` is the config key that sets ``steps`` (``train.steps``,
    ``train.warm_steps``); ``then`` is called after this one. ``seconds`` is the estimate
    of the whole training (None until it is made)."""

    def __init__(self, cycle: int, steps: int, device: torch.device | str, *, run_dir: Path,
                 key: str = "train.steps", write: Callable[[str], None] | None = None,
                 then: Callback | None = None) -> None:
        self.cycle, self.steps, self.device = cycle, steps, torch.device(device)
        self.run_dir, self.key = run_dir, key
        self.write = write or (lambda line: tqdm.write(line, file=sys.stderr))
        self.then = then
        self.started = time.perf_counter()
        self.first: float | None = None
        self.seconds: float | None = None
        self.per_step: float | None = None

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        if self.seconds is None and self.steps > 1 + MEASURED:
            now = time.perf_counter()
            if step == 1:
                self.first = now
            elif step == 1 + MEASURED and self.first is not None:
                self.per_step = (now - self.first) / MEASURED
                self.seconds = (self.first - self.started) + self.per_step * (self.steps - 1)
                self.write(self.line())
        if self.then is not None:
            self.then(step, model)

    def line(self) -> str:
        assert self.seconds is not None and self.per_step is not None
        text = (f"cycle {self.cycle}: {self.steps} steps, {fmt_minutes(self.seconds)} on this"
                f" machine ({device_text(self.device)})")
        if self.device.type != "cpu" or self.seconds <= LONG_S:
            return text
        fit = max(10, int(TARGET_S / self.per_step) // 10 * 10)
        shorter = f"--set {self.key}={fit}"
        if self.cycle == 0:  # nothing trained yet: this run may still change its training
            text = (f"{text}; to make it {fmt_minutes(fit * self.per_step)}: Ctrl-C, then"
                    f" balseg run {self.run_dir} {shorter} (fewer steps, a less trained"
                    " model)")
        else:
            text = (f"{text}; this run's training is fixed since its first cycle: a new run"
                    f" with {shorter} takes {fmt_minutes(fit * self.per_step)} here")
        if torch.get_num_threads() > 1:  # threads is a runtime key: any run may change it
            text += (f"; if other programs keep this machine's cores busy, --set threads=1"
                     f" can be several times faster than {torch.get_num_threads()}")
        return text
