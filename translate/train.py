"""The one training loop, shared by every method.

It owns what no method should repeat: device and precision, the distributed process group and
DDP wrapping, data loading and on-device augmentation, learning-rate schedules, the rich progress
bar, the JSONL log, sample grids, checkpoints, --resume, signals and the NaN guard. A method only
supplies ``train_step`` and ``sample`` (see ``methods/base.py``).

Exact resume: data order comes from a sampler seeded by (seed, epoch) that can skip the batches an
epoch already used; augmentation and dropout draw from torch's global generator; the image pool
has its own generator. All of their states are saved, so a resumed run takes the same next step,
with the same next loss, as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from translate.checkpoints import (
    atomic_path,
    load_state,
    pair_matches,
    remove_stale_temporaries,
    save_checkpoint,
    save_state,
    save_weights,
    tensor_bytes,
)
from translate.data import Augment, collate, open_dataset
from translate.data.sampler import Indexed, ResumableSampler
from translate.devices import (
    Dist,
    Precision,
    all_finite,
    close_distributed,
    cpu_name,
    deterministic,
    init_distributed,
    keep_freed_memory,
    peak_gpu_bytes,
    pick_device,
    precision_reason,
    resolve_precision,
    unwrap,
)
from translate.errors import Interrupted, TranslateError
from translate.evaluate import HIGHER_IS_BETTER, METRICS, evaluate
from translate.fid import FID_WEIGHTS, TrainingFID
from translate.images import save_png_atomic, to_unit
from translate.methods import Method, get_method
from translate.progress import Progress
from translate.recipes import Recipe, load_recipe
from translate.report import STARTS_NAME, start_facts, write_report
from translate.schedules import LR_RULES, follow_schedules, lr_factor, make_schedulers, scale_lr
from translate.signals import StopSignals, blocked, ignore_in_worker

BATCH_KEYS = ("A", "B", "label")  # what a collated batch may carry to the device
NUMBERED = re.compile(r"epoch_(\d{3,})\.safetensors")  # the numbered copies train.keep_last prunes


class TrainingInterrupted(Interrupted):
    """Raised after a signal, once the current step is done and a checkpoint is saved."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(signum, f"saved, resume with `translate train --resume {run_dir}`")


class RunPaths:
    """Where a run keeps its files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.recipe = root / "recipe.toml"
        self.weights = root / "latest.safetensors"  # for inference: exported nets + recipe in the metadata
        self.state = root / "latest.state.pt"  # for --resume
        self.log = root / "log.jsonl"
        self.samples = root / "samples"


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
        # train.batch_size is per process, as the reference's --batch_size under DDP: any number of
        # processes runs the recipe unchanged, and the global batch grows with them.
        self.local_batch = t.batch_size
        self.global_batch = t.batch_size * self.dist.world_size
        self.lr_factor = lr_factor(t.lr_scale, self.dist.world_size)

        torch.manual_seed(t.seed + self.dist.rank)  # per-rank augmentation and dropout streams
        cls = get_method(recipe.method)
        self.dataset = open_dataset(recipe.data, cls.data_kind, seed=t.seed)
        self.precision = Precision(resolve_precision(t.precision, self.device), self.device)
        info = {"classes": list(getattr(self.dataset, "classes", []))}
        self.method = cls(self._startable(recipe, resume), self.device, self.precision, info)
        self.method.world_size = self.dist.world_size
        scale_lr(self.method.optimizers, self.lr_factor)
        if self.dist.enabled:
            self._wrap_ddp()
        self.augment = Augment(recipe.data, paired=cls.data_kind == "paired")
        self.schedulers = make_schedulers(self.method.optimizers, recipe)
        self.sampler = ResumableSampler(len(self.dataset), self.dist.rank, self.dist.world_size, seed=t.seed,
                                        batch_size=self.local_batch)
        self.step = self.epoch = 0
        self.guard = NanGuard(self.paths.weights, self.precision, self.method.nets)
        self.samples_in_epoch = 0  # of the epoch's permutation, in the global order: valid for any world size
        self.skipped: list[str] = []
        self._warned: set[str] = set()
        self.signals = StopSignals(lambda signum: self.progress.say(
            f"\n{signal.Signals(signum).name}: finishing this step, then saving ..."))
        self.stopped: int | None = None  # the signal all ranks agreed to stop on (see _should_stop)
        self.resumed_from: dict[str, Any] = {}
        self._saved_step = -1
        paired = cls.data_kind == "paired"
        self.fid_eval = self._fid_eval(cls) if t.eval_every and not paired else None
        # what is evaluated on (val/ or test/ pairs, test/ or train/ images for FID); "" when nothing is
        self.eval_split = self._eval_split() if t.eval_every and paired else getattr(self.fid_eval, "split", "")
        self.best: float | None = None  # the best evaluation so far (train.eval_metric)
        if resume:
            remove_stale_temporaries(self.paths.root)  # what a killed save left
            state = load_state(self.paths.state)
            self._load(state)
            self.guard.good_step = self.step
            if not pair_matches(self.paths.weights, state) and self.dist.is_main:
                # killed between the state's rename and the weights': the state is the newer half
                self.progress.say(f"{self.paths.weights.name} is not from step {self.step} (a save was cut short): "
                                  "writing it again from the training state")
                self._saved_step = -1
                self.save()

    # --- set-up --------------------------------------------------------------------------------
    def _eval_split(self) -> str:
        """The split train.eval_every evaluates a paired method on: val/, else test/ (aligned or A/ + B/)."""
        root = Path(self.recipe.data.path)
        for split in ("val", "test"):
            if (root / split).is_dir() or (root / "A" / split).is_dir():
                return split
        raise TranslateError(f"train.eval_every needs held-out pairs beside the training ones: {root}/val/ or "
                             f"{root}/test/ (or A/val + B/val); none found")

    def _fid_eval(self, cls: type[Method]) -> TrainingFID | None:
        """train.eval_every of an unpaired method or a generator: FID/KID (translate/fid.py), which needs
        train.inception; without it one line says evaluation is off, and training goes on."""
        if cls.data_kind != "unpaired" and "G" not in cls.export_names:
            raise TranslateError(f"train.eval_every evaluates translators and generators; {self.recipe.method} "
                                 f"trains {', '.join(cls.export_names)} on {cls.data_kind} data "
                                 "(set train.eval_every=0)")
        if not self.recipe.train.inception:
            self.progress.say(f"note: train.eval_every is off: {self.recipe.method} is scored by FID, which needs "
                              f"--set train.inception=FILE (the {FID_WEIGHTS} file)")
            return None
        return TrainingFID(self.recipe, cls.data_kind, self.device)

    def _startable(self, recipe: Recipe, resume: bool) -> Recipe:
        """On resume, composed halves start from the run's own weights instead of their init files
        (the saved state then sets every value): a moved or deleted init file stops nothing."""
        model_cfg, weights = recipe.model, self.paths.weights
        moved = {f"init_{p}": str(weights) for p in ("encoder", "decoder") if getattr(model_cfg, f"init_{p}", "")}
        if not (resume and moved and weights.is_file()):
            return recipe
        return dataclasses.replace(recipe, model=dataclasses.replace(model_cfg, **moved))

    def _wrap_ddp(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        def wrap(net: torch.nn.Module) -> torch.nn.Module:
            # Batch statistics over the global batch, as one process would have them. PyTorch's
            # SyncBatchNorm runs on GPUs only; CPU processes (gloo) normalise over their own batch.
            cuda = self.device.type == "cuda"
            if cuda and any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in net.modules()):
                net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            ids = [self.device.index] if cuda else None
            # Methods call a net several times per step (CycleGAN's G_A: fake_B, rec_B, identity):
            # a static graph lets DDP reduce each parameter once per backward all the same.
            return DDP(net, device_ids=ids, static_graph=True)

        self.method.wrap(wrap)

    @property
    def total_steps(self) -> int:
        t = self.recipe.train
        total = (t.epochs + t.epochs_decay) * math.ceil(len(self.dataset) / self.global_batch)
        return min(total, t.max_steps) if t.max_steps else total

    def _loader(self) -> DataLoader:
        cuda = self.device.type == "cuda"
        workers = self.recipe.data.num_workers
        return DataLoader(
            self.dataset, batch_size=self.local_batch, sampler=self.sampler, num_workers=workers,
            collate_fn=collate, pin_memory=cuda, drop_last=False,
            generator=torch.Generator().manual_seed(self.recipe.train.seed + self.epoch),  # not the global RNG
            persistent_workers=False, prefetch_factor=4 if workers else None, worker_init_fn=ignore_in_worker,
        )

    # --- state ---------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        method = self.method
        return {
            "step": self.step, "epoch": self.epoch, "samples_in_epoch": self.samples_in_epoch,
            "world_size": self.dist.world_size, "global_batch": self.global_batch, "lr_factor": self.lr_factor,
            "nets": {n: unwrap(net).state_dict() for n, net in method.nets.items()},
            "optimizers": {n: o.state_dict() for n, o in method.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else {},
            "rng": {"cpu": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})},
            "extra": method.extra_state(), "skipped": self.skipped,
            "best_eval": self.best if self.best is not None else float("nan"),
        }

    def _load(self, state: dict[str, Any]) -> None:
        method = self.method
        for name, sd in state["nets"].items():
            unwrap(method.nets[name]).load_state_dict(sd)
        for name, sd in state["optimizers"].items():
            method.optimizers[name].load_state_dict(sd)
        for name, sd in state["schedulers"].items():
            self.schedulers[name].load_state_dict(sd)
        if self.precision.scaler and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        method.load_extra_state(state.get("extra", {}))
        best = state.get("best_eval", float("nan"))
        self.best = None if best != best else best  # NaN: no evaluation yet
        # The lr schedules were saved for the old number of processes; rescale them to this one's.
        scale_lr(method.optimizers, self.lr_factor / state.get("lr_factor", 1.0), self.schedulers.values())
        follow_schedules(self.schedulers.values())  # the recipe may have changed the schedule (train.epochs)
        self.step, self.epoch = state["step"], state["epoch"]
        # (states before the per-process batch counted global batches of train.batch_size)
        self.samples_in_epoch = state.get("samples_in_epoch",
                                          state.get("batch_in_epoch", 0) * self.recipe.train.batch_size)
        self.resumed_from = {"world_size": state.get("world_size", 1),
                             "global_batch": state.get("global_batch", self.recipe.train.batch_size)}
        if state.get("world_size", 1) == self.dist.world_size == 1:
            torch.set_rng_state(state["rng"]["cpu"])
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        else:  # per-rank streams cannot be carried over exactly; reseed them deterministically
            torch.manual_seed(self.recipe.train.seed + 7919 * self.step + self.dist.rank)
        self.skipped = list(state.get("skipped", []))
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be redone)."""
        if not self.paths.log.exists() or not self.dist.is_main:
            return
        keep = [line for line in self.paths.log.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        self.paths.log.write_text("".join(f"{line}\n" for line in keep))

    def save(self, numbered: bool = False, evaluate: bool = False) -> None:
        """Write weights (for inference) and state (for resume) as one pair; rank 0 only.
        ``evaluate``: then score the new weights on the held-out pairs, and keep them as
        best.safetensors if they are the best. A failed write is one line naming the last good pair."""
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
        state = self._state()
        self._check_room()
        try:
            save_id = save_checkpoint(self.paths.weights, self.paths.state, exported, arch, self.recipe.to_json(),
                                      meta, state)
            self.guard.good_step = self.step
            if evaluate:
                best = self.best
                self._evaluate()
                if self.best != best:  # the state carries the best score: write it again with it
                    save_state(self.paths.state, {**self._state(), "save_id": save_id})
            if numbered:
                save_weights(self.paths.root / f"epoch_{self.epoch:03d}.safetensors", exported, arch,
                             self.recipe.to_json(), meta)
                self._prune_numbered()
        except OSError as e:
            raise TranslateError(self._save_failed(e, state, exported)) from None

    def _check_room(self) -> None:
        """One warning line when the free space is less than the last save took (the new pair is
        written beside the old one before it replaces it)."""
        last = sum(p.stat().st_size for p in (self.paths.weights, self.paths.state) if p.is_file())
        free = shutil.disk_usage(self.paths.root).free
        if last and free < last:
            self.progress.say(f"warning: {free / 2**20:.0f} MB free on the disk of {self.paths.root}, and the last "
                              f"checkpoint took {last / 2**20:.0f} MB: this save may not fit")

    def _save_failed(self, e: OSError, state: dict[str, Any], exported: dict[str, torch.nn.Module]) -> str:
        need = tensor_bytes(state) + tensor_bytes({n: unwrap(net).state_dict() for n, net in exported.items()})
        free = shutil.disk_usage(self.paths.root).free if self.paths.root.is_dir() else 0
        what = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
        return (f"saving step {self.step} failed: {what}; it needs about {need / 2**20:.0f} MB, "
                f"{free / 2**20:.0f} MB are free; {self.guard.kept()}")

    def _evaluate(self) -> None:
        """PSNR/SSIM/L1 of the just-written weights on the held-out pairs (translate/evaluate.py: a CSV
        in eval/), or FID/KID of an unpaired method or generator (translate/fid.py); a line in the log,
        and best.safetensors when ``train.eval_metric`` (FID: lower) improves."""

        t = self.recipe.train
        if self.fid_eval is not None:
            means, note = self.fid_eval(self.paths.weights)
            metric, higher = "fid", False
            if note and note not in self._warned:
                self._warned.add(note)
                self.progress.say(f"note: {note}")
        else:
            # torch, not a compiled engine: these weights are new at every evaluation, compiling them costs more
            result = evaluate(self.paths.weights, self.recipe.data.path, self.paths.root / "eval" /
                              f"epoch_{self.epoch:03d}.csv", split=self.eval_split, device=str(self.device),
                              engine="torch")
            means = {k: result.mean(k) for k in METRICS}
            metric, higher = t.eval_metric, HIGHER_IS_BETTER[t.eval_metric]
        value = means[metric]
        better = self.best is None or (value > self.best if higher else value < self.best)
        if better:
            self.best = value
            with atomic_path(self.paths.root / "best.safetensors") as tmp:
                shutil.copyfile(self.paths.weights, tmp)
        line = {"step": self.step, "epoch": self.epoch, "split": self.eval_split,
                **{f"eval_{k}": round(v, 5) for k, v in means.items()}}
        with open(self.paths.log, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.board:
            self.board.log(line)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        self.progress.say(f"epoch {self.epoch}: {self.eval_split} {shown}"
                          + (" (best so far: best.safetensors)" if better else ""))

    def _prune_numbered(self) -> None:
        """Keep the newest ``train.keep_last`` numbered copies: each is a full set of weights (218 MB
        for pix2pix's unet_256), and a 200-epoch run saving every 5 epochs left 8.7 GB of them."""
        keep = self.recipe.train.keep_last
        numbered = sorted((int(match.group(1)), p) for p in self.paths.root.iterdir()
                          if (match := NUMBERED.fullmatch(p.name)))
        for _, path in numbered[:-keep] if keep else []:
            path.unlink(missing_ok=True)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs (or ``train.max_steps``) are done, a signal arrives, or a loss is NaN."""
        t, paths = self.recipe.train, self.paths
        if self.dist.is_main:
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.recipe.write_text(self.recipe.to_toml())
        self.board = None  # TensorBoard's writer (train.tensorboard), rank 0's
        if t.tensorboard and self.dist.is_main:
            from translate.tensorboard import Board  # torch's SummaryWriter: imported only when asked for

            self.board = Board(paths.root, self.step)
        sample_batch = self._sample_batch()  # fixed, so grids are comparable over time
        self._announce()
        self._record_start()
        self._start_step, self._start_time = self.step, time.perf_counter()
        self.losses: dict[str, float] = {}
        with self.signals, deterministic(t.deterministic), self.progress.start(self.total_steps, self.step), \
                self._out_of_memory():
            while not self._done() and self.stopped is None:
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
            self._write_report()
        self._close()
        seconds = time.perf_counter() - self._start_time
        done = self.step - self._start_step
        return TrainResult(paths.root, self.step, self.epoch, paths.weights, seconds,
                           done * self.global_batch / seconds if seconds > 0 else 0.0, self.skipped, self.losses,
                           _folder_bytes(paths.root), peak_gpu_bytes(self.device))

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

    def _done(self) -> bool:
        t = self.recipe.train
        return self.epoch >= t.epochs + t.epochs_decay or self.step >= self.total_steps

    def _after_step(self, step_losses: dict[str, torch.Tensor], sample_batch: dict[str, torch.Tensor] | None) -> None:
        """The NaN guard, and at train.log_every the losses averaged over ranks into the log and the
        progress display; a sample grid at train.sample_every."""
        t = self.recipe.train
        values = self._stacked(step_losses)
        log_now = self.step % t.log_every == 0 or self.step == self.total_steps
        self.guard.add(list(step_losses), values, self.step, read=log_now or self.device.type != "cuda")
        if log_now:
            self.losses = dict(zip(step_losses, (self.dist.all_reduce(values) / self.dist.world_size).tolist(),
                                   strict=True))
            rate = (self.step - self._start_step) * self.global_batch / (time.perf_counter() - self._start_time)
            self._log(self.losses, rate)
            self.progress.update(self.step, f"{rate:.2f} img/s", _fmt(self.losses),
                                 line=f"step {self.step}/{self.total_steps} epoch {self.epoch} {rate:.2f} img/s "
                                      f"{_fmt(self.losses)}")
        else:
            self.progress.update(self.step)
        if t.sample_every and self.step % t.sample_every == 0:
            self._write_samples(sample_batch)

    def _close(self) -> None:
        if self.board:
            self.board.close()
        if self.dist.enabled:
            close_distributed()

    def _epoch_batches(self):
        """This epoch's remaining batches, on the device and augmented; bad files reported once."""
        if hasattr(self.method, "resample"):  # a method that weighs its data each epoch (DB-VAE)
            if self.samples_in_epoch == 0:  # (a resumed epoch keeps the weights it started with)
                self.method.resample(self._plain_batches(), len(self.dataset))
                if self.method.weights is not None:
                    self.method.weights = self.dist.from_rank0(self.method.weights)
            self.sampler.weights = self.method.weights
            self.sampler.halves = getattr(self.method, "halves", None)  # class-balanced batches (DB-VAE)
        self.sampler.set_epoch(self.epoch, self.samples_in_epoch)
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = self.epoch
        data = self.recipe.data
        if data.whole_in_decay and hasattr(self.dataset, "cfg"):  # read by the workers this epoch starts
            decaying = self.epoch >= self.recipe.train.epochs
            self.dataset.cfg = dataclasses.replace(data, load_size=data.crop_size) if decaying else data
        cuda = self.device.type == "cuda"
        with blocked():  # workers start here
            raws = iter(self._loader())
        for raw in raws:
            self._report(raw)
            if "A" not in raw:
                continue  # every file of this batch was unreadable
            batch = {k: raw[k].to(self.device, non_blocking=cuda) for k in BATCH_KEYS if k in raw}
            if cuda:
                batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                         for k, v in batch.items()}
            yield self.augment(batch)

    def _plain_batches(self):
        """Every readable item once, in order, centre-cropped, not augmented, with its index."""
        loader = DataLoader(Indexed(self.dataset), batch_size=64, num_workers=self.recipe.data.num_workers,
                            collate_fn=list, generator=torch.Generator().manual_seed(0),
                            worker_init_fn=ignore_in_worker)
        with blocked():
            pairs = iter(loader)
        for items in pairs:
            good = [(i, it) for i, it in items if "error" not in it]
            if good:
                raw = collate([it for _, it in good])
                batch = {k: raw[k].to(self.device) for k in BATCH_KEYS if k in raw}
                yield [i for i, _ in good], self.augment(batch, train=False)

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
                  evaluate=bool(self.eval_split) and self.epoch % t.eval_every == 0)
        if t.report_every and self.epoch % t.report_every == 0:
            self._write_report()

    def _stacked(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """All losses in one float tensor on one device (a method may compute some on another,
        e.g. a CPU-side regulariser beside CUDA losses)."""
        where = self.device if self.device.type == "cuda" else "cpu"
        return torch.stack([v.detach().float().reshape(()).to(where) for v in losses.values()])

    def _report(self, raw: dict[str, Any]) -> None:
        """Each unreadable file (skipped) and note of the data once."""
        for msg in [*raw["errors"], *raw["notes"]]:
            if msg not in self._warned:
                self._warned.add(msg)
                skipped = msg in raw["errors"]
                self.skipped += [msg] if skipped else []
                self.progress.say(f"[yellow]warning:[/] {'skipped ' if skipped else ''}{msg}")

    def _log(self, losses: dict[str, float], rate: float) -> None:
        if not self.dist.is_main:
            return
        lr = next(iter(self.method.optimizers.values())).param_groups[0]["lr"]
        line = {"step": self.step, "epoch": self.epoch, "lr": lr, "images_per_s": round(rate, 3), **losses}
        with open(self.paths.log, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.board:
            self.board.log(line)

    def _sample_batch(self) -> dict[str, torch.Tensor] | None:
        """A fixed batch (first readable items, centre-cropped) so grids are comparable over time."""
        items = []
        for i in range(len(self.dataset)):
            item = self.dataset[i]
            if "error" not in item:
                items.append(item)
            if len(items) == self.recipe.train.n_samples:
                break
        if not items:
            raise TranslateError(f"no readable images in {self.recipe.data.path}")
        raw = collate(items)
        return self.augment({k: raw[k].to(self.device) for k in BATCH_KEYS if k in raw}, train=False)

    def _write_samples(self, batch: dict[str, torch.Tensor] | None) -> None:
        if batch is None or not self.dist.is_main:
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            rows = self.method.sample(batch)
        grid = torch.cat(list(to_unit(rows).clamp(0, 1)), dim=-2)  # stack rows vertically
        save_png_atomic(grid, self.paths.samples / f"step_{self.step:07d}.png")
        if self.board:
            self.board.image(self.step, grid)

    def _record_start(self) -> None:
        """The start-up facts as a line of starts.jsonl (one per start, resumes too): what `translate
        report` shows of a run that the console output of is gone."""
        if not self.dist.is_main:
            return
        t, d = self.recipe.train, self.device
        name = cpu_name() if d.type == "cpu" else torch.cuda.get_device_name(d) if d.type == "cuda" else ""
        facts = start_facts(method=self.recipe.method, step=self.step, epoch=self.epoch, total_steps=self.total_steps,
                            device=f"{d} ({name})" if name else str(d), precision=f"{self.precision.name} "
                            f"({precision_reason(t.precision, d)})", processes=self.dist.world_size,
                            batch=self.local_batch, global_batch=self.global_batch, lr=t.lr * self.lr_factor,
                            images=len(self.dataset), data=self.recipe.data.path, torch=torch.__version__)
        with open(self.paths.root / STARTS_NAME, "a") as f:
            f.write(facts)

    def _write_report(self) -> None:
        """report.html in the run folder (train.report_every). A page that cannot be written is a
        warning: it never stops the training it reports on."""
        if not self.dist.is_main:
            return

        try:
            write_report(self.paths.root)
        except (TranslateError, OSError, ImportError) as e:
            self.progress.say(f"[yellow]warning:[/] report.html not written: {e}")

    def _announce(self) -> None:
        r, t = self.recipe, self.recipe.train
        what = "resuming" if self.step else "training"
        self.progress.say(
            f"{what} {r.method} on {len(self.dataset)} images from {r.data.path} | device {self.device} | "
            f"precision {self.precision.name} ({precision_reason(t.precision, self.device)}) | "
            f"{self.dist.world_size} process(es) x batch {self.local_batch} "
            f"= global batch {self.global_batch} | lr {t.lr * self.lr_factor:g} (train.lr {t.lr:g}, "
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


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _fmt(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in losses.items())


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
