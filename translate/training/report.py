"""A run folder as one HTML page (`translate report`), and several runs on one page (`translate compare`).

The page is one self-contained file: plotly.js, the figures and the sample grids are inside it, so
it opens from disk with no server and no network (a 4.8 MB script, read once). It reads only what
the folder holds (``recipe.toml``, ``starts.jsonl``, ``log.jsonl``, ``samples/``, the weights
files), never the training state, so it can be made at any moment of a run, by another process,
while the run writes: a half-written last log line is left out, a file pruned between listing and
reading is passed over.

Loss names differ per method (pix2pix's G_GAN, G_L1, D_real, D_fake; CycleGAN's G_A, cycle_A, idt_A,
D_A, ...; a VAE's recon and kl), so curves are grouped by name alone: the generator's (G, G_*) and
the discriminator's (D, D2, D_*) losses share a plot each, any other name's prefix before "_" makes
its own (cycle_A beside cycle_B). Figures are stored as JSON in the page and drawn by one small
script, so the numbers plotted are the numbers logged (tests read them back).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import io
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from translate.analysis.evaluate import HIGHER_IS_BETTER
from translate.core.errors import TranslateError
from translate.core.files import atomic_path

REPORT_NAME = "report.html"  # in the run folder, unless -o says otherwise
STARTS_NAME = "starts.jsonl"  # one line per start of training (train.py): device, precision, processes, batch
NOT_LOSSES = ("step", "epoch", "lr", "images_per_s")  # the other keys of a training log line
SAMPLE = re.compile(r"step_(\d+)\.png")
SMOOTHING = 0.9  # TensorBoard's debiased moving average, at the weight that shows a trend through GAN noise
MAX_GRIDS = 40  # sample grids on the page, spread evenly over the run (the oldest and newest always)
MAX_POINTS = 5000  # points of a curve: a long run logged every step is thinned to lines spread evenly over it
THUMB = (480, 640)  # at most this wide and tall: a grid loads fast and still shows what the net draws
PLOT_HEIGHT = 320
# A file listed a moment ago may be gone (a numbered checkpoint pruned) or not whole: passed over.
VANISHED = (OSError, ValueError)


@dataclass
class Checkpoint:
    name: str
    step: int | None
    epoch: int | None
    bytes: int
    modified: float


@dataclass
class Run:
    """What a run folder holds, read once."""

    root: Path
    recipe_text: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    starts: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)  # training log lines
    evals: list[dict[str, Any]] = field(default_factory=list)  # eval lines (train.eval_every)
    unreadable_lines: int = 0  # a half-written last line while the run writes it, or a damaged one
    samples: list[tuple[int, Path]] = field(default_factory=list)  # (step, grid), oldest first
    checkpoints: list[Checkpoint] = field(default_factory=list)
    name: str = ""

    @property
    def method(self) -> str:
        return str(self.recipe.get("method", "?"))

    @property
    def losses(self) -> list[str]:
        """Loss names in the order the log first shows them."""
        return list(dict.fromkeys(k for line in self.steps for k in line if k not in NOT_LOSSES))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(k[len("eval_"):] for line in self.evals for k in line if k.startswith("eval_")))

    def series(self, key: str, lines: list[dict[str, Any]] | None = None) -> tuple[list[int], list[float | None]]:
        """Steps and values of one key; a NaN or inf value (a diverged step) is a gap, as JSON has no NaN."""
        pairs = [(line["step"], line[key]) for line in (self.steps if lines is None else lines) if key in line]
        return [s for s, _ in pairs], [v if _finite(v) else None for _, v in pairs]


def read_run(path: str | Path) -> Run:
    """Read a run folder as it is now. One line (TranslateError) when it is not one or has nothing logged."""
    root = Path(path)
    log = root / "log.jsonl"
    if not root.is_dir() or not (log.is_file() or (root / "recipe.toml").is_file()):
        raise TranslateError(f"{path} is not a run folder (no log.jsonl or recipe.toml): give the --out folder "
                             "of `translate train`")
    run = Run(root, name=root.resolve().name)
    with contextlib.suppress(*VANISHED):
        run.recipe_text = (root / "recipe.toml").read_text()
        run.recipe = tomllib.loads(run.recipe_text)
    run.starts, _ = _json_lines(root / STARTS_NAME)
    lines, run.unreadable_lines = _json_lines(log)
    for line in lines:
        if not isinstance(line.get("step"), int):
            run.unreadable_lines += 1
        elif any(k.startswith("eval_") for k in line):
            run.evals.append(line)
        else:
            run.steps.append(line)
    if not run.steps:
        raise TranslateError(f"{log} holds no logged step yet (a line every train.log_every steps): nothing to "
                             "report")
    if (root / "samples").is_dir():
        run.samples = sorted((int(m.group(1)), p) for p in (root / "samples").iterdir()
                             if (m := SAMPLE.fullmatch(p.name)))
    run.checkpoints = _checkpoints(root)
    return run


def _json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The lines of a JSONL file that parse as objects, and how many did not (the run may be writing
    the last one right now)."""
    if not path.is_file():
        return [], 0
    good, bad = [], 0
    for text in path.read_text(errors="replace").splitlines():
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            good.append(value)
        else:
            bad += 1
    return good, bad


def _checkpoints(root: Path) -> list[Checkpoint]:
    """The weights files with the step and epoch their metadata names, oldest step first."""
    from safetensors import safe_open

    found = []
    for p in root.glob("*.safetensors"):
        with contextlib.suppress(*VANISHED):
            with safe_open(str(p), framework="np") as f:
                meta = f.metadata() or {}
            stat = p.stat()
            found.append(Checkpoint(p.name, _int(meta.get("step")), _int(meta.get("epoch")), stat.st_size,
                                    stat.st_mtime))
    return sorted(found, key=lambda c: (c.step is None, c.step or 0, c.name))


def _int(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def smooth(values: list[float | None], weight: float = SMOOTHING) -> list[float | None]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first points are not
    pulled to zero; gaps stay gaps."""
    out: list[float | None] = []
    last = norm = 0.0
    for v in values:
        if v is None:
            out.append(None)
            continue
        last, norm = weight * last + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def loss_group(name: str) -> str:
    """The plot a loss goes on: G and D by the net they train (G_GAN, G_L1; D, D2, D_real), any other
    name by its prefix before "_" (cycle_A and cycle_B together), or alone."""
    if m := re.match(r"([GD])\d*(?:_|$)", name):
        return m.group(1)
    return name.split("_", 1)[0]


GROUP_TITLES = {"G": "generator losses (G)", "D": "discriminator losses (D)"}


def groups(names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(loss_group(n), []).append(n)
    return out


# --- figures -------------------------------------------------------------------------------------
def _figure(title: str, traces: list[dict[str, Any]], y_title: str = "") -> dict[str, Any]:
    """A plotly figure as plain JSON (data + layout): lists of numbers as logged, no typed arrays."""
    import plotly.graph_objects as go

    y_axis: dict[str, Any] = {"title": {"text": y_title}}
    values = {y for t in traces for y in t["y"] if y is not None}
    if len(values) == 1:  # plotly spans a constant at +-1, which shows a learning rate of 2e-4 as 0
        v = values.pop()
        y_axis["range"] = [v - (abs(v) * 0.1 or 1), v + (abs(v) * 0.1 or 1)]
    fig = go.Figure(layout={
        "title": {"text": html.escape(title)}, "height": PLOT_HEIGHT, "template": "plotly_white",
        "margin": {"l": 60, "r": 20, "t": 40, "b": 40}, "legend": {"orientation": "h", "y": -0.2},
        "xaxis": {"title": {"text": "step"}}, "yaxis": y_axis,
    })
    for t in traces:
        fig.add_trace(go.Scatter(**t))
    return json.loads(fig.to_json())


def _curve(xs: list[int], ys: list[float | None], name: str, color: str, legend: str | None = None,
           raw: bool = True) -> list[dict[str, Any]]:
    """A logged curve, faint, under its smoothed line of the same colour (one legend entry for both);
    ``raw=False``: the logged curve alone."""
    group = legend or name
    keep = _spread(range(len(xs)), MAX_POINTS)  # smoothed over every line, drawn at a browser's pace
    xs, ys, smoothed_ys = ([v[i] for i in keep] for v in (xs, ys, smooth(ys)))
    if not raw:  # a value set, not measured (the learning rate): drawn as it is
        return [{"x": xs, "y": ys, "name": name, "mode": "lines", "legendgroup": group, "line": {"color": color}}]
    smoothed = {"x": xs, "y": smoothed_ys, "name": f"{name} (smoothed)", "mode": "lines", "legendgroup": group,
                "line": {"color": color, "width": 2}, "showlegend": True}
    return [{"x": xs, "y": ys, "name": name, "mode": "lines", "legendgroup": group, "showlegend": False,
             "line": {"color": color, "width": 1}, "opacity": 0.35}, smoothed]


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22"]


def _eval_figure(metric: str, runs: list[Run]) -> dict[str, Any]:
    """One eval metric over steps per run, the best evaluation of each marked (a star and its value)."""
    higher = HIGHER_IS_BETTER.get(metric)
    traces: list[dict[str, Any]] = []
    for i, run in enumerate(runs):
        xs, ys = run.series(f"eval_{metric}", run.evals)
        color = COLORS[i % len(COLORS)]
        label = run.name if len(runs) > 1 else metric
        traces.append({"x": xs, "y": ys, "name": label, "mode": "lines+markers", "line": {"color": color}})
        known = [(v, s) for s, v in zip(xs, ys, strict=True) if v is not None]
        if higher is not None and known:
            value = (max if higher else min)(v for v, _ in known)
            step = next(s for v, s in known if v == value)  # the first evaluation that reached it
            traces.append({"x": [step], "y": [value], "name": f"best {label}: {value:g} at step {step}",
                           "mode": "markers+text", "text": [f"best {value:g}"], "textposition": "top center",
                           "cliponaxis": False,  # the label may stand above the plot area
                           "marker": {"symbol": "star", "size": 14, "color": color}})
    way = {True: "higher is better", False: "lower is better", None: ""}[higher]
    return _figure(f"eval: {metric}" + (f" ({way})" if way else ""), traces, metric)


def run_figures(run: Run) -> list[dict[str, Any]]:
    """One run's plots: a plot per loss group (logged and smoothed), lr, images/s, eval metrics."""
    figures = []
    for group, names in groups(run.losses).items():
        traces = []
        for i, name in enumerate(names):
            traces += _curve(*run.series(name), name, COLORS[i % len(COLORS)])
        figures.append(_figure(GROUP_TITLES.get(group, group), traces, "loss"))
    figures.append(_figure("learning rate", _curve(*run.series("lr"), "lr", COLORS[0], raw=False), "lr"))
    figures.append(_figure("images/s", _curve(*run.series("images_per_s"), "images/s", COLORS[1]), "images/s"))
    figures += [_eval_figure(m, [run]) for m in run.metrics]
    return figures


def compare_figures(runs: list[Run]) -> list[dict[str, Any]]:
    """The runs' curves overlaid, one plot per loss name they all log (then lr, images/s, eval metrics
    they share), a colour per run."""
    figures = []
    for key, title in [*((n, n) for n in shared(r.losses for r in runs)), ("lr", "learning rate"),
                       ("images_per_s", "images/s")]:
        traces = []
        for i, run in enumerate(runs):
            traces += _curve(*run.series(key), run.name, COLORS[i % len(COLORS)], legend=run.name, raw=key != "lr")
        figures.append(_figure(GROUP_TITLES.get(key, title), traces, title))
    return figures + [_eval_figure(m, runs) for m in shared(r.metrics for r in runs)]


def shared(names: Iterable[list[str]]) -> list[str]:
    """The names every list holds, in the first list's order."""
    first, *others = names
    return [n for n in first if all(n in other for other in others)]


# --- the page ------------------------------------------------------------------------------------
def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write ``run_dir``'s page (default ``run_dir/report.html``) and return its path."""
    run = read_run(run_dir)
    out = Path(output) if output is not None else run.root / REPORT_NAME
    sections = [_facts_section(run), _plots_section(run_figures(run)), _samples_section(run, out.parent),
                _checkpoints_section(run), _recipe_section(run)]
    _write_page(out, f"{run.name}: {run.method}", _status(run), sections)
    return out


def write_compare(run_dirs: Sequence[str | Path], output: str | Path) -> Path:
    """Write one page comparing ``run_dirs``: their facts, the recipe keys that differ, the curves they
    share overlaid and their latest sample grids side by side."""
    if len(run_dirs) < 2:
        raise TranslateError("compare takes two or more run folders")
    runs = [read_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for r, d in zip(runs, run_dirs, strict=True):  # two runs of one name (a/run, b/run): their paths then
        r.name = str(d) if names.count(r.name) > 1 else r.name
    out = Path(output)
    sections = [_compare_table(runs), _differences_section(runs), _plots_section(compare_figures(runs)),
                _latest_samples_section(runs, out.parent)]
    common = shared(r.losses for r in runs)
    note = (f"{len(runs)} runs; curves of the {len(common)} loss names they all log" if common else
            f"{len(runs)} runs; they log no loss name in common (methods {', '.join(r.method for r in runs)})")
    _write_page(out, "compare: " + " | ".join(r.name for r in runs), note, sections)
    return out


def _status(run: Run) -> str:
    last = run.steps[-1]
    total = run.starts[-1].get("total_steps") if run.starts else None
    of = f" of {total}" if total else ""
    when = _time((run.root / "log.jsonl").stat().st_mtime)
    unread = (f"; {run.unreadable_lines} log line(s) not read (being written, or damaged)"
              if run.unreadable_lines else "")
    return f"step {last['step']}{of}, epoch {last.get('epoch', '?')}; last log line at {when}{unread}"


def _time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


FACTS = [("device", "device"), ("precision", "precision"), ("processes", "processes"),
         ("batch per process", "batch"), ("global batch", "global_batch"), ("learning rate", "lr"),
         ("training images", "images"), ("data", "data"), ("torch", "torch")]


def _facts_section(run: Run) -> str:
    if not run.starts:
        train = run.recipe.get("train", {})
        device, precision, batch = (html.escape(str(train.get(k, "?"))) for k in ("device", "precision", "batch_size"))
        return ("<h2>Start-up</h2><p>Not recorded (the run began before starts.jsonl); from its recipe: device "
                f"{device}, precision {precision}, batch per process {batch}.</p>")
    rows = [[label, run.starts[-1].get(key, "")] for label, key in FACTS]
    rows.append(["started", ", ".join(f"{_time(s['time']) if 'time' in s else '?'} at step {s.get('step', '?')}"
                                      for s in run.starts)])
    return "<h2>Start-up</h2>" + _table(["", run.starts[-1].get("method", run.method)], rows, "facts")


def _plots_section(figures: list[dict[str, Any]]) -> str:
    parts = []
    for i, fig in enumerate(figures):
        data = json.dumps(fig, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside
        parts.append(f'<div class="plot" id="plot-{i}" style="height: {PLOT_HEIGHT}px"></div>'
                     f'<script type="application/json" class="figure" data-for="plot-{i}">{data}</script>')
    return '<h2>Curves</h2><div class="plots">' + "".join(parts) + "</div>"


def _thumbnail(path: Path) -> tuple[str, int, int]:
    """A grid as a small JPEG data URI, with its size."""
    from PIL import Image

    with Image.open(path) as opened:
        im = opened.convert("RGB")
        im.thumbnail(THUMB)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}", im.width, im.height


def _figure_html(path: Path, caption: str, page_dir: Path) -> str:
    uri, w, h = _thumbnail(path)
    link = html.escape(Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix())  # the full-size PNG
    return (f'<figure><a href="{link}"><img class="sample" src="{uri}" width="{w}" height="{h}" '
            f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)}</figcaption></figure>')


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spaced, the first and last always."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _samples_section(run: Run, page_dir: Path) -> str:
    shown = []
    for step, path in reversed(_spread(run.samples, MAX_GRIDS)):  # newest first
        with contextlib.suppress(*VANISHED):
            shown.append(_figure_html(path, f"step {step}", page_dir))
    if not shown:
        return "<h2>Samples</h2><p>No sample grid yet (samples/, every train.sample_every steps).</p>"
    more = f" ({len(shown)} of {len(run.samples)}, spread over the run)" if len(run.samples) > len(shown) else ""
    return f'<h2>Samples, newest first{more}</h2><div class="strip">{"".join(shown)}</div>'


def _latest_samples_section(runs: list[Run], page_dir: Path) -> str:
    shown = []
    for run in runs:
        if run.samples:
            step, path = run.samples[-1]
            with contextlib.suppress(*VANISHED):
                shown.append(_figure_html(path, f"{run.name}: step {step}", page_dir))
    return f'<h2>Latest samples</h2><div class="side">{"".join(shown) or "<p>No sample grid yet.</p>"}</div>'


def _checkpoints_section(run: Run) -> str:
    rows = [[c.name, "" if c.step is None else c.step, "" if c.epoch is None else c.epoch,
             f"{c.bytes / 1e6:.1f} MB", _time(c.modified)] for c in run.checkpoints]
    if not rows:
        return "<h2>Checkpoints</h2><p>None written yet (one every epoch).</p>"
    return "<h2>Checkpoints</h2>" + _table(["file", "step", "epoch", "size", "written"], rows)


def _recipe_section(run: Run) -> str:
    return f"<h2>Recipe</h2><pre>{html.escape(run.recipe_text)}</pre>"


def _compare_table(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        s = r.starts[-1] if r.starts else {}
        best = "; ".join(f"{m} {v:g}" for m in r.metrics
                         if (v := next((e[f"eval_{m}"] for e in reversed(r.evals) if f"eval_{m}" in e), None))
                         is not None)
        rows.append([r.name, r.method, r.steps[-1]["step"], s.get("device", ""), s.get("precision", ""),
                     s.get("global_batch", ""), best])
    return "<h2>Runs</h2>" + _table(["run", "method", "step", "device", "precision", "global batch",
                                     "last eval"], rows)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _differences_section(runs: list[Run]) -> str:
    flat = [_flat(r.recipe) for r in runs]
    keys = sorted({k for f in flat for k in f if len({json.dumps(f.get(k)) for f in flat}) > 1})
    if not keys:
        return "<h2>Recipes</h2><p>The same recipe.</p>"
    rows = [[k, *(f.get(k, "") for f in flat)] for k in keys]
    return "<h2>Recipe keys that differ</h2>" + _table(["key", *(r.name for r in runs)], rows)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 4px; } h2 { font-size: 1.1em; margin-top: 24px; }
.status { color: #555; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
.plot { min-width: 0; }
.strip, .side { display: flex; gap: 10px; overflow-x: auto; align-items: flex-start; padding-bottom: 8px; }
.side { flex-wrap: wrap; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; text-align: center; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
"""

# Draws each figure from its JSON (responsive: a plot follows its column's width).
DRAW = """
document.querySelectorAll("script.figure").forEach(function (s) {
  var fig = JSON.parse(s.textContent);
  Plotly.newPlot(s.dataset.for, fig.data, fig.layout, {responsive: true, displaylogo: false});
});
"""


def _write_page(out: Path, title: str, status: str, sections: list[str]) -> None:
    """The page with plotly.js inside it, written to a temporary name and renamed: a browser (or the
    next report_every) never reads half a page."""
    from plotly.offline import get_plotlyjs

    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            f'<h1>{html.escape(title)}</h1><p class="status">{html.escape(status)}</p>'
            f"{''.join(sections)}<script>{DRAW}</script></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")


def start_facts(**facts: Any) -> str:
    """One line of starts.jsonl (the Trainer's start-up facts, with the time)."""
    return json.dumps({"time": round(dt.datetime.now(dt.UTC).timestamp(), 3), **facts}) + "\n"

