"""The `translate` command: parse, call the library, turn known errors into one line.

Each command is a short function; the work is in library modules that tests call directly.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from translate.core.errors import EXIT_ERROR, Interrupted, TranslateError, exit_code
from translate.core.options import RunOptions  # torch-free: the defaults `translate run --help` shows

if TYPE_CHECKING:
    from translate.inference.generate import FolderSummary

T = TypeVar("T")

app = typer.Typer(
    name="translate",
    help="Image-to-image translation with deep generative models: train from a recipe, translate folders.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Lines as written, not highlighted or wrapped: logs are grepped.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
say = err.print


def command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``app.command(name)`` behind the one CLI boundary: a TranslateError ends the process with its
    exit status and one line on stderr, no traceback."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)  # Typer reads the options from the wrapped signature
        def boundary(*args: object, **kwargs: object) -> None:
            try:
                fn(*args, **kwargs)
            except Interrupted as e:  # not a mistake: what was kept and how to go on, said once per job
                from translate.core.progress import is_main_process

                if is_main_process():
                    say(escape(str(e)))
                raise typer.Exit(e.exit_code) from None
            except TranslateError as e:
                say(f"[bold red]error:[/] {escape(str(e))}")  # a message may hold [brackets]: not markup
                raise typer.Exit(e.exit_code) from None
            except OSError as e:  # the machine's, not ours (a full disk, no permission): one line too
                where = f" ({e.filename})" if e.filename else ""
                say(f"[bold red]error:[/] {escape(f'{e.strerror or e}{where}')}")
                raise typer.Exit(EXIT_ERROR) from None

        app.command(name)(boundary)
        return boundary

    return register


@command("recipes")
def recipes_cmd() -> None:
    """List the recipes, one line each."""
    from translate.core.recipes import alias_of, list_recipes, load_recipe

    for name in list_recipes():
        try:
            r = load_recipe(name)
            also = f" (another name for {alias})" if (alias := alias_of(name)) else ""
            out.print(f"[bold]{name:<12}[/] {r.method:<10} {r.description}{also}")
        except TranslateError as e:
            out.print(f"[bold]{name:<12}[/] [red]invalid:[/] {e}")


@command("train")
def train_cmd(
    recipe: Annotated[str | None, typer.Option("--recipe", "-r", help="Recipe name (see `translate recipes`) "
                                               "or path to a TOML file.")] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Data folder (sets data.path).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder for weights, samples, "
                                                 "log. Default: runs/<recipe>.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field: "
                                                   "section.key=value (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder exactly "
                                                "where it stopped.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    devices: Annotated[int, typer.Option("--devices", help="Processes to start on this machine, one per GPU "
                                         "(CPU: gloo). Each takes train.batch_size images a step.", min=1)] = 1,
) -> None:
    """Train a model from a recipe.

    Writes to the run folder: recipe.toml (resolved), log.jsonl, samples/*.png, latest.safetensors
    (weights for inference) and latest.state.pt (for --resume). Ctrl-C or SIGTERM finishes the
    current step, saves and exits with 130 / 143.
    """
    from translate.core.recipes import load_recipe
    from translate.training import train as training

    overrides = list(set_ or [])
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        given = {"resume": resume, "recipe": recipe, "data": data and data.expanduser().resolve(), "out": out_dir}
        args = [f"--set={o}" for o in overrides] + (["--quiet"] if quiet else [])
        args += [f"--{key}={value}" for key, value in given.items() if value]
        from translate.training.launch import launch

        raise typer.Exit(launch(devices, ["train", *args]))
    if resume is not None:
        if recipe or data:
            raise TranslateError("--resume takes the recipe and data from the run folder; use --set to change fields")
        result = training.resume(resume, overrides, quiet=quiet)
    else:
        if not recipe:
            raise TranslateError("give --recipe NAME (see `translate recipes`) or --resume RUN_DIR")
        if data is not None:
            overrides.insert(0, f"data.path={data.expanduser().resolve()}")
        r = load_recipe(recipe, overrides)
        result = training.train(r, out_dir or Path("runs") / Path(recipe).stem, quiet=quiet)
    from translate.core.progress import is_main_process

    if not is_main_process():
        return
    skipped = f"; skipped {len(result.skipped)} unreadable file(s)" if result.skipped else ""
    peak = f"; peak GPU memory {_size(result.peak_gpu_bytes)}" if result.peak_gpu_bytes else ""
    say(f"done: step {result.step}, epoch {result.epoch}, {result.images_per_s:.2f} img/s{peak}; "
        f"weights {result.weights}; run folder {result.run_dir} {_size(result.run_bytes)}{skipped}")


def _tracked(verb: str, quiet: bool, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs, progress=...)``, its progress shown on stderr as ``verb``."""
    from translate.core.progress import Progress

    with Progress(err, verb, quiet=quiet) as progress:
        return work(*args, **kwargs, progress=progress)


def _size(n_bytes: int) -> str:
    n = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


Weights = Annotated[Path, typer.Option("--weights", "-w", help="A .safetensors weights file.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")]
Device = Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")]
AnyDevice = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")]
Precision = Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only failures and errors.")]
InDir = Annotated[Path, typer.Argument(help="Folder of images (walked recursively).")]
Direction = Annotated[str, typer.Option(help="AtoB, or BtoA for CycleGAN's other generator.")]
Engine = Annotated[str, typer.Option(help="auto | torch | openvino. auto: OpenVINO on the CPU where it is faster "
                                          "(bench/engines.py), torch on CUDA.")]


@command("import")
def import_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A latest_net_G*.pth state dict of the reference, the CUT "
                                               "code or the BicycleGAN code.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
    arch: Annotated[str | None, typer.Option("--arch", help="resnet_9blocks | resnet_6blocks | unet_128 | "
                                             "unet_256 | bicycle_unet_128 | bicycle_unet_256 (default: read "
                                             "from the tensors).")] = None,
    norm: Annotated[str | None, typer.Option("--norm", help="instance | batch | none (default: read from "
                                             "the tensors).")] = None,
    encoder: Annotated[Path | None, typer.Option("--encoder", help="BicycleGAN: its latest_net_E.pth too, for "
                                                 "`translate run --style`.")] = None,
) -> None:
    """Convert a pytorch-CycleGAN-and-pix2pix, CUT or BicycleGAN generator checkpoint to our safetensors weights.

    The file is read with torch.load(weights_only=True): nothing in it is unpickled as code.
    """
    from translate.core.checkpoints import save_weights
    from translate.inference.reference import import_reference

    net, spec = import_reference(checkpoint, arch=arch, norm=norm)
    nets, specs = {"G": net}, {"G": spec}
    if encoder is not None:
        from translate.inference.reference import import_encoder

        nets["E"], specs["E"] = import_encoder(encoder, spec)
    save_weights(output, nets, specs, "", {"source": f"reference:{checkpoint.name}"})
    k = spec["kwargs"]
    extras = [what for key, what in (("dropout", "dropout"), ("antialias", "anti-aliased down"),
                                     ("antialias_up", "anti-aliased up")) if k.get(key)]
    extras += [f"latent {k['nz']}"] if "nz" in k else []
    if "E" in specs:
        extras.append(f"encoder {specs['E']['net']} at {specs['E']['kwargs']['resolution']}x"
                      f"{specs['E']['kwargs']['resolution']}")
    say(f"wrote {output}: {spec['net']} ngf {k['ngf']} norm {k['norm']}{''.join(', ' + e for e in extras)}")


@command("run")
def run_cmd(
    in_dir: InDir,
    out_dir: Annotated[Path, typer.Argument(help="Where the translated tree goes (created; not inside IN).")],
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="A .safetensors weights file "
                                                 "(default: the shipped model in weights/).")] = RunOptions.weights,
    direction: Direction = RunOptions.direction,
    size: Annotated[int | None, typer.Option(help="Resize so the shorter side is N pixels (default: keep "
                                             "each image's size).", min=1)] = RunOptions.size,
    max_pixels: Annotated[int, typer.Option(help="Images larger than this are translated in overlapping "
                                            "tiles, so memory stays bounded.", min=1)] = RunOptions.max_pixels,
    tile: Annotated[int, typer.Option(help="Tile side in pixels for large images.", min=16)] = RunOptions.tile,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Images of equal size per batch "
                                                   "at 256x256, scaled by image area (default: 16 on CUDA, 1 on "
                                                   "the CPU, where larger batches are slower).",
                                                   min=1)] = RunOptions.batch_size,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16. auto: bf16 where the device "
                                           "runs it natively, else fp32.")] = RunOptions.precision,
    engine: Engine = RunOptions.engine,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the network (pays off on "
                                           "large jobs).")] = RunOptions.compile,
    fmt: Annotated[str, typer.Option("--format", help="keep | png | jpg | webp.")] = RunOptions.format,
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.", min=1, max=100)] = RunOptions.quality,
    skip_existing: Annotated[bool, typer.Option(help="Leave outputs that exist (resumes a killed "
                                                "job).")] = RunOptions.skip_existing,
    keep_alpha: Annotated[bool, typer.Option(help="Re-attach the input's alpha channel to the "
                                             "output.")] = RunOptions.keep_alpha,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: up to 8 on CUDA; none on "
                                                "the CPU, where decoding is 0.2% of the work).",
                                                min=0)] = RunOptions.workers,
    device: AnyDevice = RunOptions.device,
    samples: Annotated[int, typer.Option(help="Translations of each image, written as name_0.ext ... "
                                         "(models with a latent code: bicyclegan).", min=1)] = RunOptions.samples,
    seed: Annotated[int | None, typer.Option(help="Seed of the latents: the same seed gives the same files "
                                             "(default: z = 0 for one sample, seed 0 for more).")] = RunOptions.seed,
    style: Annotated[Path | None, typer.Option(help="An example output image: its code (BicycleGAN's encoder) is "
                                               "the latent of every input, instead of z = 0 or --samples.")
                     ] = RunOptions.style,
    quiet: Quiet = False,
) -> None:
    """Translate every image under IN into the same tree under OUT.

    Exit codes: 0 all images translated (or already there); 3 some files failed (each is listed
    with its reason; the rest were translated); 1 nothing could start (bad folder, weights, option).
    Under torchrun each process translates a disjoint share of the files on its own GPU.
    """
    from translate.core.progress import Progress, is_main_process
    from translate.inference.cached import translate_folder

    opts = RunOptions(weights=weights, direction=direction, size=size, max_pixels=max_pixels, tile=tile,
                      batch_size=batch_size, precision=precision, engine=engine, compile=compile_, format=fmt.lower(),
                      quality=quality, skip_existing=skip_existing, keep_alpha=keep_alpha, workers=workers,
                      device=device, samples=samples, seed=seed, style=style)
    with Progress(err, quiet=quiet) as progress:
        summary = translate_folder(in_dir, out_dir, opts, progress=progress)  # (torch only where needed)
    if is_main_process() and (not quiet or summary.n_failed or summary.interrupted):
        say(summary.line())
    raise typer.Exit(summary.exit_code)


@command("sample")
def sample_cmd(
    weights: Weights,
    output: Output = Path("samples.png"),
    n: Annotated[int, typer.Option("-n", help="How many images.", min=1)] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the latents: the same seed gives the same images.")] = 0,
    truncation: Annotated[float, typer.Option(help="Pull latents towards the average: 1 none, 0 all the "
                                              "same image.", min=0.0)] = 1.0,
    class_name: Annotated[str | None, typer.Option("--class", help="Class name (class-conditional models; "
                                                   "default: cycle through the classes).")] = None,
    device: Device = "cpu",
) -> None:
    """Draw images from a generative model (gan, cgan, pggan, stylegan2, vae, ae) into a grid PNG."""
    from translate.inference.generate import write_samples

    write_samples(weights, output, n, seed, truncation, class_name, device)
    say(f"wrote {output}: {n} images")


@command("interpolate")
def interpolate_cmd(
    weights: Weights,
    output: Output = Path("interpolation.png"),
    steps: Annotated[int, typer.Option(help="Images along each path.", min=2)] = 8,
    rows: Annotated[int, typer.Option(help="Paths between random latents, one a row.", min=1)] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the latents.")] = 0,
    between: Annotated[tuple[Path, Path] | None, typer.Option(help="Two images to interpolate between "
                                                              "(ae / vae: through their codes).")] = None,
    image: Annotated[Path | None, typer.Option("--input", "-i", help="The image to translate along the paths "
                                               "(translators with a latent code: bicyclegan).")] = None,
    device: Device = "cpu",
) -> None:
    """Walk the latent space: spherical interpolation between Gaussian latents, or between two images;
    for a multimodal translator, the translations of one image (--input) along the paths."""
    from translate.inference.generate import write_interpolation

    n_rows, per_row = write_interpolation(weights, output, steps, seed, rows, between, device, image)
    say(f"wrote {output}: {n_rows} row(s) of {per_row}")


@command("reconstruct")
def reconstruct_cmd(
    in_dir: Annotated[Path, typer.Argument(help="Folder of images.")],
    out_dir: Annotated[Path, typer.Argument(help="Where the reconstructions go (PNG, same tree).")],
    weights: Weights,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Encode and decode every image with an autoencoder (ae, vae, beta-vae); exit 3 if some failed."""
    from translate.inference.generate import reconstruct

    s = _tracked("reconstructing", quiet, reconstruct, weights, in_dir, out_dir, device)
    say(f"wrote {s.done} reconstruction(s) to {out_dir}" + _not_done(s))
    raise typer.Exit(s.exit_code)


@command("encode")
def encode_cmd(
    in_dir: Annotated[Path, typer.Argument(help="Folder of images.")],
    weights: Weights,
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file of codes.")] = Path(
        "z.safetensors"),
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Latent codes of every image (ae, vae, beta-vae): one (N, z_dim) tensor "z", files in the metadata;
    exit 3 if some failed."""
    from translate.inference.generate import encode

    s = _tracked("encoding", quiet, encode, weights, in_dir, output, device)
    assert s.z is not None  # (encode raises when it has no image to encode)
    say(f"wrote {output}: {s.z.shape[0]} codes of {s.z.shape[1]} dims" + _not_done(s))
    raise typer.Exit(s.exit_code)


def _not_done(s: FolderSummary) -> str:
    """", N failed, M skipped (not image files)" of a folder summary, or nothing."""
    failed = f", {len(s.failed)} failed" if s.failed else ""
    return failed + (f", {len(s.skipped)} skipped (not image files)" if s.skipped else "")


@command("score")
def score_cmd(
    in_dir: InDir,
    weights: Weights,
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV of scores, worst first.")] = Path("scores.csv"),
    samples: Annotated[int, typer.Option("--samples", "-k", help="Importance samples per image for the "
                                         "negative log-likelihood (VAEs).", min=1)] = 16,
    top: Annotated[int | None, typer.Option(help="Mark the N worst images as outliers.", min=1)] = None,
    quantile: Annotated[float | None, typer.Option(help="Mark images scoring above this quantile (default "
                                                   "0.99 without --top).")] = None,
    copy_to: Annotated[Path | None, typer.Option(help="Copy the outliers here (tree mirrored).")] = None,
    sheet: Annotated[Path | None, typer.Option(help="PNG of the worst images beside their reconstructions "
                                               "(default: the CSV's name with .png).")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV with columns file,is_outlier: print ROC-AUC and "
                                                "average precision.")] = None,
    batch_size: BatchSize = 64,
    precision: Precision = "auto",
    engine: Engine = "auto",
    device: AnyDevice = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the importance samples.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Outlier scores of every image under IN with an autoencoder (ae, vae, beta-vae): how badly the
    model explains each image. Exit 3 when some files could not be read (each is named)."""
    from translate.analysis.analyze import score

    s = _tracked("scoring", quiet, score, weights, in_dir, output, samples=samples, top=top, quantile=quantile,
                 copy_to=copy_to, sheet=sheet, labels=labels, batch_size=batch_size, device=device,
                 precision=precision, engine=engine, seed=seed)
    copied = f", copied to {copy_to}" if copy_to else ""
    say(f"scored {s.scored} images ({len(s.failed)} failed); {len(s.outliers)} marked as outliers{copied}; "
        f"wrote {s.csv}" + (f" and {s.sheet}" if s.sheet else ""))
    if s.auc is not None:
        auc, ap, n = s.auc
        left = f" ({s.unlabelled} without a label left out)" if s.unlabelled else ""
        out.print(f"ROC-AUC {auc:.3f}, average precision {ap:.3f} over {n} labelled images{left}")
    raise typer.Exit(s.exit_code)


@command("classify")
def classify_cmd(
    in_dir: InDir,
    weights: Weights,
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV of probabilities.")] = Path("predictions.csv"),
    batch_size: BatchSize = 64,
    precision: Precision = "auto",
    engine: Engine = "auto",
    device: AnyDevice = "auto",
    quiet: Quiet = False,
) -> None:
    """The positive class's probability for every image (dbvae weights). Subfolders named as the
    model's classes count as the truth: accuracy is printed per subfolder."""
    from translate.analysis.analyze import classify

    s = _tracked("classifying", quiet, classify, weights, in_dir, output, batch_size=batch_size, device=device,
                 precision=precision, engine=engine)
    for group, (right, total) in sorted(s.by_folder.items()):
        out.print(f"{group}: accuracy {right / total:.3f} ({right}/{total})")
    say(f"classified {s.classified} images ({len(s.failed)} failed); wrote {s.csv}")
    raise typer.Exit(s.exit_code)


@command("debias")
def debias_cmd(
    in_dir: Annotated[Path, typer.Argument(help="Folder of images (walked recursively), e.g. the positives.")],
    weights: Weights,
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV of sampling probabilities.")] = Path(
        "weights.csv"),
    bins: Annotated[int | None, typer.Option(help="Histogram bins per latent dimension (default: the "
                                             "model's recipe).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Histogram smoothing (default: the model's recipe).")] = None,
    sheet: Annotated[Path | None, typer.Option(help="PNG of the most and least often drawn images (default: "
                                               "the CSV's name with .png).")] = None,
    batch_size: BatchSize = 64,
    device: AnyDevice = "auto",
    quiet: Quiet = False,
) -> None:
    """How often the DB-VAE would draw each image: sampling probability and latent density (dbvae weights)."""
    from translate.analysis.analyze import debias

    s = _tracked("encoding", quiet, debias, weights, in_dir, output, bins=bins, alpha=alpha, sheet=sheet,
                 batch_size=batch_size, device=device)
    say(f"{s.images} images ({len(s.failed)} failed): the most drawn {s.max_min:.1f}x as often as the least, "
        f"entropy {s.entropy:.3f} of uniform; wrote {s.csv} and {s.sheet}")
    raise typer.Exit(s.exit_code)


@command("eval")
def eval_cmd(
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="A translator's weights (paired "
                                                 "metrics, with --data).")] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Paired data: aligned test/ (A|B side by "
                                              "side) or A/test + B/test.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV of metrics per pair.")] = Path("eval.csv"),
    split: Annotated[str, typer.Option(help="Which split of the data: test, val, ...")] = "test",
    direction: Direction = "AtoB",
    images: Annotated[Path | None, typer.Option(help="A folder of generated images (FID/KID against --ref).")] = None,
    ref: Annotated[Path | None, typer.Option(help="A folder of real images (FID/KID).")] = None,
    inception: Annotated[Path | None, typer.Option(help="The FID Inception weights, "
                                                   "pt_inception-2015-12-05-6726825d.pth (FID/KID).")] = None,
    lpips: Annotated[Path | None, typer.Option(help="Paired: add LPIPS, with the torchvision AlexNet weights "
                                               "file alexnet-owt-7be5be79.pth.")] = None,
    kid_subsets: Annotated[int, typer.Option(help="KID: random subsets averaged.", min=1)] = 100,
    kid_subset_size: Annotated[int | None, typer.Option(help="KID: images per subset (default 1000, or the "
                                                        "smaller folder's size, said, when it has fewer).",
                                                        min=2)] = None,
    resize: Annotated[str, typer.Option(help="FID/KID: pytorch-fid (native size, bilinear inside the network, "
                                        "as published FIDs) or clean (bicubic antialiased to 299 first).")
                      ] = "pytorch-fid",
    precision: Precision = "auto",
    engine: Engine = "auto",
    device: AnyDevice = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary, failures and errors.")] = False,
) -> None:
    """How good a model is. Paired (--weights, --data): PSNR, SSIM and L1 of a translator's outputs
    against the targets, a CSV row per pair, the mean, median and worst five. Unpaired or generative
    (--images, --ref, --inception): FID and KID between two folders, features cached beside each."""
    from rich.table import Table

    from translate.analysis.evaluate import evaluate

    if images is not None and ref is not None:  # FID and KID between two folders
        from translate.analysis.fid import distances

        d = distances(images, ref, inception, device=device, resize=resize, kid_subsets=kid_subsets,
                      kid_subset_size=kid_subset_size)
        for note in d.notes:
            err.print(f"note: {note}")
        cached = [str(f) for f, c in zip((images, ref), d.cached, strict=True) if c]
        out.print(f"FID {d.fid:.3f}; KID {d.kid[0]:.5f} +- {d.kid[1]:.5f} ({d.n_images} images against {d.n_ref})")
        if cached:
            err.print(f"features read from the cache in {', '.join(cached)}")
        return
    if images is not None or ref is not None:
        raise TranslateError("FID/KID compare two folders: give both --images and --ref")
    if weights is None or data is None:
        raise TranslateError("give --weights and --data (paired metrics), or --images and --ref (FID/KID)")
    s = _tracked("evaluating", quiet, evaluate, weights, data, output, split=split, direction=direction,
                 device=device, precision=precision, lpips=lpips, engine=engine)
    table = Table("metric", "mean", "median", title=f"{len(s.rows)} {s.split} pairs of {data}")
    for k in s.metrics:
        table.add_row(k, f"{s.mean(k):.4f}", f"{s.median(k):.4f}")
    out.print(table)
    out.print("worst five by PSNR: " + ", ".join(f"{f} ({metrics['psnr']:.2f} dB)" for f, metrics in s.worst()))
    err.print(f"wrote {s.csv}" + (f"; {len(s.failed)} pair(s) failed" if s.failed else ""))
    raise typer.Exit(s.exit_code)


@command("export")
def export_cmd(
    weights: Weights,
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write (.onnx or .pt).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | torchscript.")] = "onnx",
    direction: Direction = "AtoB",
) -> None:
    """Export a translator or a zoo generator to ONNX or TorchScript, then check the file: its
    output on a real input must match PyTorch's (ONNX: with onnxruntime, when installed)."""
    from translate.inference.export import describe, export

    s = export(weights, output, fmt.lower(), direction)
    say(describe(s))


@command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder (the --out of `translate train`).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file to write (default: "
                                                "RUN/report.html).")] = None,
) -> None:
    """One HTML page of a run: recipe, start-up facts, loss curves, eval metrics, sample grids, checkpoints.

    Opens from disk (no server); reads what the folder holds, so it works while the run trains."""
    from translate.training.report import write_report

    say(f"wrote {write_report(run, output)}")


@command("compare")
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("compare.html"),
) -> None:
    """Runs on one page: the loss curves they share overlaid, the recipe keys that differ, their latest samples."""
    from translate.training.report import write_compare

    say(f"wrote {write_compare(runs, output)}")


@command("zoo")
def zoo_cmd() -> None:
    """Every model: parameters, resolution, and the commands that apply to it; then every network."""
    from rich.table import Table

    from translate.methods import zoo

    table = Table("recipe", "method", "kind", "parameters", "resolution", "commands")
    for row in zoo():
        table.add_row(row.recipe, row.method, row.kind, f"{row.params / 1e6:.2f} M", f"{row.resolution}",
                      ", ".join(row.commands))
    out.print(table)
    _print_networks()


def _print_networks() -> None:
    """The registered networks by role, with their facts; then the encoder + decoder pairs that fit."""
    from translate.core.registry import CODES, NETS, ROLES

    out.print("\n[bold]networks[/] (model.generator / model.discriminator / model.encoder / model.decoder of a "
              "recipe)")
    for role, what in ROLES.items():
        names = NETS.names(role=role)
        if not names:
            continue
        out.print(f"[bold]{role}s[/] ({what})")
        for name in names:
            info, m = NETS.info(name), NETS.info(name).size_multiple
            partners = NETS.partners(name, "discriminator") if role in ("translator", "generator", "autoencoder") \
                else []
            facts = [fact for shown, fact in (
                (True, f"family {info.family}"),
                (callable(m) or m > 1, "sides a multiple of " + ("2^levels" if callable(m) else str(m))),
                (info.fixed_size, "works at its trained resolution"), (info.gives, f"gives {info.gives}"),
                (info.takes, f"takes {' or '.join(info.takes)}"),
                (info.source, f"starts from `--recipe {info.source and info.source[2]}` weights"),
                (info.reference, "reference checkpoints import"), (partners, f"trains with {', '.join(partners)}"),
            ) if shown]
            shown = name.removesuffix(f"_{role}") if role in ("encoder", "decoder") else name
            out.print(f"  {shown:<15} {info.summary}  [dim]({'; '.join(facts)})[/]")
    out.print("[bold]pairs that fit[/] (model.encoder + model.decoder: the code one gives, the other takes)")
    for e, d in NETS.pairs():
        code = NETS.info(f"{e}_encoder").gives
        out.print(f"  {e + ' + ' + d:<20} {code}: {CODES[code]}")


@command("info")
def info_cmd() -> None:
    """Versions, devices, and the precision `auto` picks on each."""
    import platform

    import torch

    from translate import __version__
    from translate.core.devices import bf16_native, cpu_name, fp16_native, resolve_precision

    out.print(f"translate {__version__} | python {platform.python_version()} | torch {torch.__version__}")
    for d in [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]:
        name = cpu_name() if d.type == "cpu" else torch.cuda.get_device_name(d)
        out.print(f"{str(d):<8} {name} | bf16 native: {'yes' if bf16_native(d) else 'no'} | "
                  f"fp16 native: {'yes' if fp16_native(d) else 'no'} | auto precision (inference): "
                  f"{resolve_precision('auto', d)}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(exit_code(signal.SIGINT))
