"""The one training loop, shared by every method.

It owns what no method should repeat: device and precision, the distributed process group and
DDP wrapping, learning-rate schedules, the rich progress bar, --resume, signals; and, each in its
own module beside it, the data on the device (batches.py), the run folder's logs, grids and report
(run_folder.py), checkpoints (checkpointer.py), evaluation with the best copy (evaluation.py) and the
NaN guard (guard.py). A method only supplies ``train_step`` and ``sample`` (see ``methods/base.py``).

Exact resume: data order comes from a sampler seeded by (seed, epoch) that can skip the batches an
epoch already used; augmentation and dropout draw from torch's global generator; the image pool
has its own generator. All of their states are saved, so a resumed run takes the same next step,
with the same next loss, as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from translate.core.checkpoints import load_state, pair_matches, remove_stale_temporaries
from translate.core.devices import (
    Dist,
    Precision,
    close_distributed,
    cpu_name,
    ddp,
    deterministic,
    init_distributed,
    keep_freed_memory,
    peak_gpu_bytes,
    pick_device,
    precision_reason,
    resolve_precision,
)
from translate.core.errors import Interrupted, TranslateError
from translate.core.progress import Progress
from translate.core.recipes import Recipe, load_recipe
from translate.core.signals import StopSignals
from translate.data import open_dataset
from translate.methods import get_method
from translate.training.batches import Batch, Batches
from translate.training.checkpointer import Checkpointer, restore, snapshot
from translate.training.evaluation import Evaluation
from translate.training.guard import NanGuard
from translate.training.run_folder import RunLog, RunPaths
from translate.training.schedules import LR_RULES, lr_factor, make_schedulers, scale_lr


class TrainingInterrupted(Interrupted):
    """Raised after a signal, once the current step is done and a checkpoint is saved."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(signum, f"saved, resume with `translate train --resume {run_dir}`")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    weights: Path
    seconds: float
    images_per_s: float
    skipped: list[str] = field(default_factory=list)
    last_losses: dict[str, float] = field(default_factory=dict)
    run_bytes: int = 0  # the run folder's size on disk at the end
    peak_gpu_bytes: int = 0  # most GPU memory this process's tensors held at once (CUDA only)


class Trainer:
    """Trains one recipe into one run folder. ``fit()`` does the work.

    ``resume=True`` continues from ``out_dir/latest.state.pt`` at the same step.
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, resume: bool = False,
                 console: Console | None = None, quiet: bool = False) -> None:
        self.recipe, self.paths = recipe, RunPaths(Path(out_dir))
        t = recipe.train
        if not resume and (self.paths.state.exists() or self.paths.weights.exists()):
            raise TranslateError(f"{out_dir} already holds a run: continue it with `translate train --resume "
                                 f"{out_dir}`, or give another --out")
        self.device = pick_device(t.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # steps reuse the heap instead of page-faulting through fresh mmaps
        self.dist: Dist = init_distributed(self.device)
        console = console or Console(stderr=True, quiet=quiet or not self.dist.is_main)
        self.progress = Progress(console, "train", every_s=0)  # a log line at every train.log_every
        self.log = RunLog(self.paths, self.progress, self.dist.is_main)
        self.checkpoints = Checkpointer(self.paths, recipe.to_json(), t.keep_last, self.progress)
        # train.batch_size is per process, as the reference's --batch_size under DDP: any number of
        # processes runs the recipe unchanged, and the global batch grows with them.
        self.global_batch = t.batch_size * self.dist.world_size
        self.lr_factor = lr_factor(t.lr_scale, self.dist.world_size)

        torch.manual_seed(t.seed + self.dist.rank)  # per-rank augmentation and dropout streams
        cls = get_method(recipe.method)
        self.dataset = open_dataset(recipe.data, cls.data_kind, seed=t.seed)
        self.batches = Batches(recipe, self.dataset, cls.data_kind == "paired", self.device, self.dist.rank,
                               self.dist.world_size, self.progress)
        self.precision = Precision(resolve_precision(t.precision, self.device), self.device)
        info = {"classes": list(getattr(self.dataset, "classes", []))}
        self.method = cls(_startable(recipe, self.paths.weights, resume), self.device, self.precision, info)
        self.method.world_size = self.dist.world_size
        scale_lr(self.method.optimizers, self.lr_factor)
        if self.dist.enabled:
            self.method.wrap(lambda net: ddp(net, self.device))
        self.schedulers = make_schedulers(self.method.optimizers, recipe)
        self.step = self.epoch = 0
        self.samples_in_epoch = 0  # of the epoch's permutation, in the global order: valid for any world size
        self.guard = NanGuard(self.paths.weights, self.precision, self.method.nets)
        self.evaluation = Evaluation(recipe, cls, self.device, self.progress)
        self.signals = StopSignals(lambda signum: self.progress.say(
            f"\n{signal.Signals(signum).name}: finishing this step, then saving ..."))
        self.stopped: int | None = None  # the signal all ranks agreed to stop on (see _should_stop)
        self.resumed_from: dict[str, Any] = {}
        self._saved_step = -1
        if resume:
            remove_stale_temporaries(self.paths.root)  # what a killed save left
            state = load_state(self.paths.state)
            restore(self, state)
            self.log.truncate(self.step)
            self.guard.good_step = self.step
            if not pair_matches(self.paths.weights, state) and self.dist.is_main:
                # killed between the state's rename and the weights': the state is the newer half
                self.progress.say(f"{self.paths.weights.name} is not from step {self.step} (a save was cut short): "
                                  "writing it again from the training state")
                self.save()

    @property
    def total_steps(self) -> int:
        t = self.recipe.train
        total = (t.epochs + t.epochs_decay) * math.ceil(len(self.dataset) / self.global_batch)
        return min(total, t.max_steps) if t.max_steps else total

    def save(self, numbered: bool = False, evaluate: bool = False) -> None:
        """Write weights (for inference) and state (for resume) as one pair; rank 0 only.
        ``evaluate``: then score the new weights (train.eval_every), keeping them as best.safetensors
        if they are the best. A failed write is one line naming the last good pair."""
        self.guard.read(self.step)
        self.guard.check_weights(self.step)
        self._saved_step = self.step
        if not self.dist.is_main:
            return
        method = self.method
        arch = {n: method.arch(n) for n in method.nets}
        exported = method.export()
        meta = {"step": str(self.step), "epoch": str(self.epoch), "method": self.recipe.method,
                "kind": method.model_kind(), "info": json.dumps(method.info)}
        state = snapshot(self)
        with self.checkpoints.failing_as_one_line(self.step, state, exported, self.guard.kept):
            save_id = self.checkpoints.save(exported, arch, meta, state)
            self.guard.good_step = self.step
            if evaluate and self.evaluation(self.paths.weights, self.step, self.epoch, self.log):
                self.checkpoints.rewrite_state(snapshot(self), save_id)  # the state carries the new best score
            if numbered:
                self.checkpoints.numbered(self.epoch, exported, arch, meta)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs (or ``train.max_steps``) are done, a signal arrives, or a loss is NaN."""
        t, paths = self.recipe.train, self.paths
        if self.dist.is_main:
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.recipe.write_text(self.recipe.to_toml())
        if t.tensorboard:
            self.log.open_board(self.step)
        sample_batch = self.batches.fixed()  # fixed, so grids are comparable over time
        self._announce()
        self._start_step, self._start_time = self.step, time.perf_counter()
        self.losses: dict[str, float] = {}
        with self.signals, deterministic(t.deterministic), self.progress.start(self.total_steps, self.step), \
                self._out_of_memory():
            while self.epoch < t.epochs + t.epochs_decay and self.step < self.total_steps and self.stopped is None:
                # An epoch: this epoch's remaining batches, on the device and augmented.
                for batch in self._epoch_batches():
                    # One step of the method; then the NaN guard, log, progress and sample grid.
                    self.method.steps_done = self.step
                    losses = self.method.train_step(batch)
                    self.step += 1
                    self.samples_in_epoch += self.global_batch
                    self._after_step(losses, sample_batch)
                    # A signal on any rank stops all ranks after this same step.
                    if self._should_stop() or self.step >= self.total_steps:
                        break
                # The epoch's end (also when the last step ended it): schedules, save, evaluate.
                if self.stopped is None and (self.step < self.total_steps
                                             or self.samples_in_epoch >= len(self.dataset)):
                    self._end_epoch()
        # Stopped or done: the last step's weights and state are saved (a NaN raised above: nothing is).
        if self._saved_step != self.step:
            self.save()
        if self.stopped is not None:
            self._close()
            raise TrainingInterrupted(self.stopped, paths.root)
        self._write_samples(sample_batch)
        if t.report_every:  # and at the end, with the last grid
            self.log.report()
        self._close()
        seconds = time.perf_counter() - self._start_time
        rate = (self.step - self._start_step) * self.global_batch / seconds if seconds > 0 else 0.0
        return TrainResult(paths.root, self.step, self.epoch, paths.weights, seconds, rate, self.batches.skipped,
                           self.losses, sum(p.stat().st_size for p in paths.root.rglob("*") if p.is_file()),
                           peak_gpu_bytes(self.device))

    @contextlib.contextmanager
    def _out_of_memory(self) -> Iterator[None]:
        """CUDA out of memory in a step: one line naming the sizes that did not fit; the last save stays."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            t, d = self.recipe.train, self.recipe.data
            raise TranslateError(
                f"out of GPU memory at step {self.step + 1}: train.batch_size={t.batch_size} of data.crop_size="
                f"{d.crop_size} images does not fit on {self.device}; try --set train.batch_size="
                f"{max(1, t.batch_size // 2)} or a smaller data.crop_size; {self.guard.kept()}") from None

    def _epoch_batches(self) -> Iterator[Batch]:
        """This epoch's remaining batches, weighed first by a method that weighs its data (DB-VAE)."""
        method: Any = self.method
        if hasattr(method, "resample"):
            if self.samples_in_epoch == 0:  # (a resumed epoch keeps the weights it started with)
                method.resample(self.batches.every_item(), len(self.dataset))
                if method.weights is not None:
                    method.weights = self.dist.from_rank0(method.weights)
            self.batches.sampler.weights = method.weights
            self.batches.sampler.halves = getattr(method, "halves", None)  # class-balanced batches
        return self.batches.epoch(self.epoch, self.samples_in_epoch)

    def _after_step(self, step_losses: dict[str, torch.Tensor], sample_batch: Batch) -> None:
        """The NaN guard, and at train.log_every the losses averaged over ranks into the log and the
        progress display; a sample grid at train.sample_every."""
        t = self.recipe.train
        # All losses in one float tensor on one device (a method may compute some on another, e.g. a
        # CPU-side regulariser beside CUDA losses).
        where = self.device if self.device.type == "cuda" else "cpu"
        values = torch.stack([v.detach().float().reshape(()).to(where) for v in step_losses.values()])
        log_now = self.step % t.log_every == 0 or self.step == self.total_steps
        self.guard.add(list(step_losses), values, self.step, read=log_now or self.device.type != "cuda")
        if log_now:
            self.losses = dict(zip(step_losses, (self.dist.all_reduce(values) / self.dist.world_size).tolist(),
                                   strict=True))
            rate = (self.step - self._start_step) * self.global_batch / (time.perf_counter() - self._start_time)
            lr = next(iter(self.method.optimizers.values())).param_groups[0]["lr"]
            self.log.write({"step": self.step, "epoch": self.epoch, "lr": lr, "images_per_s": round(rate, 3),
                            **self.losses})
            shown = " ".join(f"{k} {v:.3f}" for k, v in self.losses.items())
            line = f"step {self.step}/{self.total_steps} epoch {self.epoch} {rate:.2f} img/s {shown}"
            self.progress.update(self.step, f"{rate:.2f} img/s", shown, line=line)
        else:
            self.progress.update(self.step)
        if t.sample_every and self.step % t.sample_every == 0:
            self._write_samples(sample_batch)

    def _end_epoch(self) -> None:
        with warnings.catch_warnings():
            # A run resumed exactly at an epoch's end steps its (restored) schedules before any
            # optimizer step in this process; torch's "lr_scheduler.step() before optimizer.step()"
            # warning is then a false alarm: no value of the schedule is skipped.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for s in self.schedulers.values():
                s.step()
        self.epoch += 1
        self.samples_in_epoch = 0
        t = self.recipe.train
        self.save(numbered=bool(t.save_every) and self.epoch % t.save_every == 0,
                  evaluate=bool(self.evaluation.split) and self.epoch % t.eval_every == 0)
        if t.report_every and self.epoch % t.report_every == 0:
            self.log.report()

    def _write_samples(self, batch: Batch) -> None:
        if self.dist.is_main:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self.log.grid(self.step, self.method.sample(batch))

    def _announce(self) -> None:
        """The start-up facts: a line (and notes) on the console, and a line of starts.jsonl."""
        r, t, d = self.recipe, self.recipe.train, self.device
        name = cpu_name() if d.type == "cpu" else torch.cuda.get_device_name(d) if d.type == "cuda" else ""
        facts = self.log.start(
            method=r.method, step=self.step, epoch=self.epoch, total_steps=self.total_steps,
            device=f"{d} ({name})" if name else str(d), precision=f"{self.precision.name} "
            f"({precision_reason(t.precision, d)})", processes=self.dist.world_size, batch=t.batch_size,
            global_batch=self.global_batch, lr=t.lr * self.lr_factor, images=len(self.dataset), data=r.data.path,
            torch=torch.__version__)
        self.progress.say(
            f"{'resuming' if self.step else 'training'} {r.method} on {len(self.dataset)} images from {r.data.path} "
            f"| device {d} | precision {facts['precision']} | {self.dist.world_size} process(es) x batch "
            f"{t.batch_size} = global batch {self.global_batch} | lr {facts['lr']:g} (train.lr {t.lr:g}, "
            f"lr_scale {t.lr_scale}: {LR_RULES[t.lr_scale]}) | step {self.step}/{self.total_steps} | "
            f"run {self.paths.root}")
        for note in self.method.notes:
            self.progress.say(f"note: {note}")
        old = self.resumed_from
        if old and (old["world_size"], old["global_batch"]) != (self.dist.world_size, self.global_batch):
            self.progress.say(f"note: this run trained with {old['world_size']} process(es), global batch "
                              f"{old['global_batch']}; from step {self.step} on the global batch is "
                              f"{self.global_batch} (set train.batch_size to keep it)")

    def _should_stop(self) -> bool:
        """True once any rank got SIGINT/SIGTERM: all ranks stop after the same step.

        Only this agreed answer steers the loop. A signal lands on each rank at its own moment; a
        rank that also read its own flag elsewhere (say at an epoch's end) would stop while its
        peers start the next step, and both would wait for each other forever."""
        stop = int(self.dist.all_reduce(torch.tensor([self.signals.stop or 0]), op="max"))
        self.stopped = stop or None
        return self.stopped is not None

    def _close(self) -> None:
        self.log.close()
        if self.dist.enabled:
            close_distributed()


def _startable(recipe: Recipe, weights: Path, resume: bool) -> Recipe:
    """On resume, composed halves start from the run's own weights instead of their init files
    (the saved state then sets every value): a moved or deleted init file stops nothing."""
    moved = {f"init_{p}": str(weights) for p in ("encoder", "decoder") if getattr(recipe.model, f"init_{p}", "")}
    if not (resume and moved and weights.is_file()):
        return recipe
    return replace(recipe, model=replace(recipe.model, **moved))


def train(recipe: Recipe, out_dir: str | Path, *, console: Console | None = None, quiet: bool = False) -> TrainResult:
    """Train a recipe into ``out_dir`` (the library entry point behind `translate train`)."""
    return Trainer(recipe, out_dir, console=console, quiet=quiet).fit()


def resume(run_dir: str | Path, overrides: list[str] | None = None, *, console: Console | None = None,
           quiet: bool = False) -> TrainResult:
    """Continue a run from its saved state; ``overrides`` may extend it (e.g. train.max_steps)."""
    paths = RunPaths(Path(run_dir))
    if not paths.recipe.is_file():
        raise TranslateError(f"{run_dir} is not a run folder (no recipe.toml)")
    if not paths.state.is_file():
        raise TranslateError(f"{run_dir} has no saved training state ({paths.state.name}) to resume from")
    recipe = load_recipe(paths.recipe, overrides)
    return Trainer(recipe, paths.root, resume=True, console=console, quiet=quiet).fit()
