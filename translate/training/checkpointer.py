"""Checkpoints of a run: the pair (weights for inference, state for --resume) written together, the
numbered copies train.save_every keeps (pruned to train.keep_last), a warning before a save that may
not fit, and one line naming the last good pair when a write fails."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from translate.core.checkpoints import save_checkpoint, save_state, save_weights, tensor_bytes
from translate.core.devices import unwrap
from translate.core.errors import TranslateError
from translate.core.progress import Progress
from translate.training.run_folder import RunPaths
from translate.training.schedules import follow_schedules, scale_lr

if TYPE_CHECKING:
    from translate.training.train import Trainer

NUMBERED = re.compile(r"epoch_(\d{3,})\.safetensors")  # the numbered copies train.keep_last prunes


class Checkpointer:
    """Writes one run's checkpoints (rank 0 calls it)."""

    def __init__(self, paths: RunPaths, recipe_json: str, keep_last: int, progress: Progress) -> None:
        self.paths, self.recipe_json, self.keep_last, self.progress = paths, recipe_json, keep_last, progress

    def save(self, exported: dict[str, nn.Module], arch: dict[str, Any], meta: dict[str, str],
             state: dict[str, Any]) -> str:
        """The pair; returns its id (a rewritten state keeps it, see ``rewrite_state``)."""
        self._check_room()
        return save_checkpoint(self.paths.weights, self.paths.state, exported, arch, self.recipe_json, meta, state)

    def rewrite_state(self, state: dict[str, Any], save_id: str) -> None:
        """The state again, still paired with the weights just written (it carries a new best score)."""
        save_state(self.paths.state, {**state, "save_id": save_id})

    def numbered(self, epoch: int, exported: dict[str, nn.Module], arch: dict[str, Any], meta: dict[str, str]) -> None:
        """epoch_NNN.safetensors, and the oldest beyond train.keep_last removed: each is a full set of
        weights (218 MB for pix2pix's unet_256), and a 200-epoch run saving every 5 epochs left 8.7 GB."""
        save_weights(self.paths.root / f"epoch_{epoch:03d}.safetensors", exported, arch, self.recipe_json, meta)
        numbered = sorted((int(match.group(1)), p) for p in self.paths.root.iterdir()
                          if (match := NUMBERED.fullmatch(p.name)))
        for _, path in numbered[:-self.keep_last] if self.keep_last else []:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def failing_as_one_line(self, step: int, state: dict[str, Any], exported: dict[str, nn.Module],
                            kept: Callable[[], str]) -> Iterator[None]:
        """A failed write (a full disk, a vanished folder) as one line: what it needed, what is free,
        and ``kept()``, the last good checkpoint."""
        try:
            yield
        except OSError as e:
            need = tensor_bytes(state) + tensor_bytes({n: unwrap(net).state_dict() for n, net in exported.items()})
            free = shutil.disk_usage(self.paths.root).free if self.paths.root.is_dir() else 0
            what = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
            raise TranslateError(f"saving step {step} failed: {what}; it needs about {need / 2**20:.0f} MB, "
                                 f"{free / 2**20:.0f} MB are free; {kept()}") from None

    def _check_room(self) -> None:
        """One warning line when the free space is less than the last save took (the new pair is
        written beside the old one before it replaces it)."""
        last = sum(p.stat().st_size for p in (self.paths.weights, self.paths.state) if p.is_file())
        free = shutil.disk_usage(self.paths.root).free
        if last and free < last:
            self.progress.say(f"warning: {free / 2**20:.0f} MB free on the disk of {self.paths.root}, and the last "
                              f"checkpoint took {last / 2**20:.0f} MB: this save may not fit")


def snapshot(tr: Trainer) -> dict[str, Any]:
    """A training state: where the run is (step, epoch, samples of the epoch, processes), its method's
    nets and optimizers, schedules, loss scaler, torch's random streams, the method's own extras (an
    image pool), the files skipped and the best evaluation."""
    method, device, best = tr.method, tr.device, tr.evaluation.best
    return {
        "step": tr.step, "epoch": tr.epoch, "samples_in_epoch": tr.samples_in_epoch,
        "world_size": tr.dist.world_size, "global_batch": tr.global_batch, "lr_factor": tr.lr_factor,
        "nets": {n: unwrap(net).state_dict() for n, net in method.nets.items()},
        "optimizers": {n: o.state_dict() for n, o in method.optimizers.items()},
        "schedulers": {n: s.state_dict() for n, s in tr.schedulers.items()},
        "scaler": tr.precision.scaler.state_dict() if tr.precision.scaler else {},
        "rng": {"cpu": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
        "extra": method.extra_state(), "skipped": tr.batches.skipped,
        "best_eval": best if best is not None else float("nan"),
    }


def restore(tr: Trainer, state: dict[str, Any]) -> None:
    """:func:`snapshot`'s state back into ``tr``, with the schedules scaled to its number of processes."""
    method, recipe = tr.method, tr.recipe
    for name, sd in state["nets"].items():
        unwrap(method.nets[name]).load_state_dict(sd)
    for key, objects in (("optimizers", method.optimizers), ("schedulers", tr.schedulers)):
        for name, sd in state[key].items():
            objects[name].load_state_dict(sd)
    if tr.precision.scaler and state.get("scaler"):
        tr.precision.scaler.load_state_dict(state["scaler"])
    method.load_extra_state(state.get("extra", {}))
    best = state.get("best_eval", float("nan"))
    tr.evaluation.best = None if best != best else best  # NaN: no evaluation yet
    # The lr schedules were saved for the old number of processes; rescale them to this one's.
    scale_lr(method.optimizers, tr.lr_factor / state.get("lr_factor", 1.0), tr.schedulers.values())
    follow_schedules(tr.schedulers.values())  # the recipe may have changed the schedule (train.epochs)
    tr.step, tr.epoch = state["step"], state["epoch"]
    # (states before the per-process batch counted global batches of train.batch_size)
    tr.samples_in_epoch = state.get("samples_in_epoch", state.get("batch_in_epoch", 0) * recipe.train.batch_size)
    tr.resumed_from = {"world_size": state.get("world_size", 1),
                       "global_batch": state.get("global_batch", recipe.train.batch_size)}
    if state.get("world_size", 1) == tr.dist.world_size == 1:
        torch.set_rng_state(state["rng"]["cpu"])
        if tr.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], tr.device)
    else:  # per-rank streams cannot be carried over exactly; reseed them deterministically
        torch.manual_seed(recipe.train.seed + 7919 * tr.step + tr.dist.rank)
    tr.batches.skipped = list(state.get("skipped", []))
