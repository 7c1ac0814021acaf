"""Learning-rate schedules per epoch, and their scaling with the number of processes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from translate.core.recipes import Recipe

LR_RULES = {"none": "the same for any number of processes, as the reference",
            "linear": "x processes", "sqrt": "x sqrt(processes)"}


def lr_factor(rule: str, world_size: int) -> float:
    """What ``train.lr_scale`` multiplies train.lr by when ``world_size`` processes each take a batch:
    none (the reference's choice), linear (Goyal et al. 2017) or sqrt."""
    return {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[rule]


def make_schedulers(optimizers: dict[str, torch.optim.Optimizer], recipe: Recipe) -> dict[str, Any]:
    """Per-epoch schedules: linear (constant, then linear to 0), step, cosine, constant."""
    t = recipe.train
    out: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
    for name, opt in optimizers.items():
        if t.lr_policy == "linear":
            def rule(epoch: int, n=t.epochs, d=t.epochs_decay) -> float:
                return 1.0 - max(0, epoch + 1 - n) / float(d + 1)
            out[name] = torch.optim.lr_scheduler.LambdaLR(opt, rule)
        elif t.lr_policy == "step":
            out[name] = torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_decay_iters, gamma=0.1)
        elif t.lr_policy == "cosine":
            out[name] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(t.epochs + t.epochs_decay, 1))
        else:
            out[name] = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    return out


def scale_lr(optimizers: dict[str, torch.optim.Optimizer], factor: float, schedulers: Iterable[Any] = ()) -> None:
    """Multiply every learning rate (and the schedules' base rates) by ``factor``."""
    if factor == 1.0:
        return
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
    for sched in schedulers:
        sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        sched._last_lr = [lr * factor for lr in sched._last_lr]


def follow_schedules(schedulers: Iterable[Any]) -> None:
    """Set the optimizers' rates to their schedules' values at the current epoch where they differ:
    a run resumed with another schedule (``--resume --set train.epochs=N``) restores the rates the
    old schedule had set, and would train its first resumed epoch at them (a finished run, at 0).
    Equal rates are left as they are, so a plain resume stays exact to the bit."""
    for sched in schedulers:
        closed = getattr(sched, "_get_closed_form_lr", None)
        lrs = closed() if closed is not None else sched.get_lr()
        groups = sched.optimizer.param_groups
        if all(math.isclose(g["lr"], lr, rel_tol=1e-6, abs_tol=1e-12) for g, lr in zip(groups, lrs, strict=True)):
            continue
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = list(lrs)
