"""The NaN guard: training stops with one line at the first NaN or inf, and bad weights are never saved."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from translate.core.devices import Precision, all_finite, unwrap
from translate.core.errors import TranslateError


class NanGuard:
    """Stops training with one line once a loss or a gradient is NaN or inf, and refuses to save
    weights that are: bad weights are never written, the last good checkpoint stays.

    Reading a value on CUDA waits for the device, and a wait every step left the GPU idle between
    steps at batch 1; so there the checks pile up on the device and are read at log steps and before
    every save. On the CPU, which has nothing to overlap, they are read every step. Gradients are
    checked as ``Precision.step`` applies them: a loss can be finite while a gradient is not (a
    bf16 kernel once left some unwritten, tests/test_backbones.py), and Adam then writes NaN into
    the weights without any loss showing it until the next step."""

    def __init__(self, weights: Path, precision: Precision, nets: dict[str, torch.nn.Module]) -> None:
        self.weights = weights  # the last good checkpoint, named in the message
        self.good_step: int | None = None  # its step, once this process saved or resumed one
        self.precision, self.nets = precision, nets
        self.ok: torch.Tensor | None = None  # all losses finite since step ``since`` (not read yet)
        self.grads_ok: torch.Tensor | None = None  # all gradients stepped since then finite
        self.since = 0
        self.last: tuple[list[str], torch.Tensor] = ([], torch.zeros(0))

    def add(self, names: list[str], values: torch.Tensor, step: int, read: bool) -> None:
        ok, grads_ok = torch.isfinite(values).all(), self.precision.take_grads_finite()
        if self.ok is None:
            self.ok, self.since = ok, step
        else:
            self.ok &= ok
        if grads_ok is not None:
            self.grads_ok = grads_ok if self.grads_ok is None else self.grads_ok & grads_ok.to(self.grads_ok.device)
        self.last = (names, values)
        if read:
            self.read(step)

    def read(self, step: int) -> None:
        if self.ok is None:
            return
        ok, grads_ok = bool(self.ok), self.grads_ok is None or bool(self.grads_ok)
        self.ok = self.grads_ok = None
        if ok and grads_ok:
            return
        when = f"at step {step}" if self.since == step else f"between steps {self.since} and {step}"
        if ok:
            what = f"{self._bad_gradient()} {when} (every loss finite)"
        else:
            names, values = self.last  # the last step's: a bad one earlier in the window may be gone
            bad = {k: v for k, v in zip(names, values.tolist(), strict=True) if not math.isfinite(v)}
            what = f"loss {', '.join(bad)} became {next(iter(bad.values()))}" if bad else "a loss became nan or inf"
            what = f"{what} {when}"
        raise TranslateError(f"{what}: training diverged (try a lower train.lr); {self.kept()}")

    def check_weights(self, step: int) -> None:
        """Before a save: every weight and buffer finite, else one line naming the first that is not."""
        tensors = {(name, key): t for name, net in self.nets.items()
                   for key, t in unwrap(net).state_dict().items() if t.is_floating_point()}
        if bool(all_finite(tensors.values())):
            return
        name, key = next(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
        raise TranslateError(f"weight {key} of {name} became nan or inf by step {step}: not saved; {self.kept()}")

    def _bad_gradient(self) -> str:
        """The first parameter whose gradient is still held and not finite (read at once on the CPU,
        that is the step's own), with its value."""
        for name, net in self.nets.items():
            for key, p in unwrap(net).named_parameters():
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    value = p.grad[~torch.isfinite(p.grad)][0].item()
                    return f"a gradient of {name} ({key}) became {value}"
        return "a gradient became nan or inf"

    def kept(self) -> str:
        """What the run still has: the last good checkpoint and its step, or none."""
        if self.weights.exists():
            at = f" (step {self.good_step})" if self.good_step is not None else ""
            return f"the last good checkpoint{at} is kept at {self.weights}; resume from it with --resume"
        return "no checkpoint was written yet"
