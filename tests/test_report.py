"""`translate report` and `translate compare` (translate/training/report.py), train.report_every and
train.tensorboard, on run folders made by real tiny trainings.

The plots' numbers are read back out of the page (each figure is JSON in it) and compared with
log.jsonl's; the event files are read back with TensorBoard's own reader; the page is opened in a
real headless Chromium (Debian's package, installed here where absent), which must draw every plot
and image without a console error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import assert_one_line_error, copy_first, shared, tiny
from PIL import Image
from typer.testing import CliRunner

import translate.training.run_folder
from translate.cli.commands import app
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe
from translate.training.report import loss_group, read_run, write_compare, write_report
from translate.training.train import train

# pix2pix with a small ResNet at 32 px: fast, paired (so train.eval_every has metrics to plot)
SMALL = ["data.load_size=32", "data.crop_size=32", "model.generator=resnet_6blocks", "model.ngf=4", "model.ndf=4",
         "train.batch_size=2", "data.num_workers=0", "train.log_every=1", "train.sample_every=1",
         "train.save_every=1", "train.device=cpu", "model.dropout=false", "train.n_samples=2"]


class Page(HTMLParser):
    """What a report page holds: its figures (the JSON the page draws), images, tables' cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: list[dict] = []
        self.images: list[dict[str, str]] = []
        self.cells: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script" and a.get("class") == "figure":
            self._in = "figure"
        elif tag == "td":
            self._in = "td"
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "figure":
            self.figures.append(json.loads(data))
        elif self._in == "td":
            self.cells.append(data)

    def figure(self, title: str) -> dict:
        return next(f for f in self.figures if f["layout"]["title"]["text"].startswith(title))

    def trace(self, name: str) -> dict:
        return next(t for f in self.figures for t in f["data"] if t.get("name") == name)


def page(path: Path) -> Page:
    return Page(path.read_text())


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for these tiny nets (as conftest's single_thread, for the module's fixtures
    too): on a busy 2-core machine OpenMP's waiting took most of their time."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """4 training pairs and 2 held-out ones (val/) of people2outline."""
    root = tmp_path_factory.mktemp("p2o")
    copy_first(shared("people2outline", "train"), root / "train", 4)
    copy_first(shared("people2outline", "test"), root / "val", 2)
    return root


@pytest.fixture(scope="module")
def run(pairs, tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    """A real pix2pix run of 2 epochs (4 steps) with evaluation, TensorBoard and a report every epoch;
    also what each report written during it showed: (its last log line's epoch, 0-based, and the last
    step plotted)."""
    out = tmp_path_factory.mktemp("runs") / "p2o"
    import translate.training.report as report

    written: list[tuple[int, int]] = []
    real = report.write_report

    def spy(run_dir, output=None):
        path = real(run_dir, output)
        xs = page(path).trace("G_GAN")["x"]
        written.append((read_run(run_dir).steps[-1]["epoch"], xs[-1]))
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(translate.training.run_folder, "write_report", spy)  # the name run_folder.py calls
        train(load_recipe("pix2pix", [f"data.path={pairs}", "train.epochs=2", "train.epochs_decay=0",
                                      "train.eval_every=1", "train.report_every=1", "train.tensorboard=true",
                                      *SMALL]), out, quiet=True)
    return out, written


def test_the_plots_hold_the_logged_numbers(run):
    """Every loss, lr and images/s of log.jsonl is in the page's plots as logged (and smoothed beside
    it); eval metrics with the best step marked; sample grids newest first; checkpoints with steps."""
    root, _ = run
    p = page(write_report(root, root / "page.html"))
    lines = log(root)
    steps = [x for x in lines if "G_GAN" in x]
    evals = [x for x in lines if "eval_psnr" in x]
    assert len(steps) == 4 and len(evals) == 2
    for name in ("G_GAN", "G_L1", "D_real", "D_fake", "lr", "images_per_s"):
        shown = p.trace("images/s" if name == "images_per_s" else name)
        assert shown["x"] == [x["step"] for x in steps]
        assert shown["y"] == [x[name] for x in steps], name  # the same floats, not rounded
    assert len(p.trace("G_GAN (smoothed)")["y"]) == 4
    assert {t["name"] for t in p.figure("generator losses")["data"]} >= {"G_GAN", "G_L1"}
    assert {t["name"] for t in p.figure("discriminator losses")["data"]} >= {"D_real", "D_fake"}
    psnr = p.figure("eval: psnr")["data"]
    assert psnr[0]["y"] == [x["eval_psnr"] for x in evals]
    best = max(evals, key=lambda x: x["eval_psnr"])
    assert psnr[1]["x"] == [best["step"]] and psnr[1]["y"] == [best["eval_psnr"]]
    grids = sorted((root / "samples").iterdir(), reverse=True)
    assert [i["alt"] for i in p.images] == [f"step {int(g.stem[5:])}" for g in grids]  # newest first
    assert all(i["src"].startswith("data:image/jpeg;base64,") for i in p.images)
    assert "latest.safetensors" in p.cells and "epoch_002.safetensors" in p.cells
    facts = {label: p.cells[p.cells.index(label) + 1] for label in ("device", "processes", "global batch")}
    assert facts == {"device": json.loads((root / "starts.jsonl").read_text())["device"], "processes": "1",
                     "global batch": "2"} and facts["device"].startswith("cpu")


def test_report_every_writes_the_page_during_training(run):
    root, written = run
    # after epoch 1 (steps 1-2), after epoch 2 (steps 3-4), and at the end with the last grid
    assert written == [(0, 2), (1, 4), (1, 4)]
    assert (root / "report.html").is_file()


def test_a_half_written_log_line_is_left_out(run, tmp_path):
    """A report made while the run writes its log: the last line cut short is not read, the rest is."""
    root, _ = run
    copy = tmp_path / "live"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.html"))
    with open(copy / "log.jsonl", "a") as f:
        f.write('{"step": 5, "epoch": 2, "lr": 0.0002, "G_G')
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    p = page(copy / "report.html")
    assert p.trace("G_GAN")["y"] == [x["G_GAN"] for x in log(root) if "G_GAN" in x]
    assert "1 log line(s) not read" in (copy / "report.html").read_text()


def test_not_a_run_or_nothing_logged_is_one_line(tmp_path):
    runner = CliRunner()
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "is not a run folder")
    (tmp_path / "recipe.toml").write_text('method = "pix2pix"\n')
    (tmp_path / "log.jsonl").write_text("")
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "no logged step yet")
    assert_one_line_error(runner.invoke(app, ["compare", str(tmp_path)]), "two or more run folders")


def test_compare_overlays_the_curves_two_methods_share(run, tmp_path):
    """pix2pix beside FastCUT (another method, other loss names): the names both log overlaid, a
    curve per run with each run's logged numbers; the latest grid of each side by side."""
    root, _ = run
    h2z = tmp_path / "h2z"
    copy_first(shared("horse2zebra", "trainA"), h2z / "trainA", 2)
    copy_first(shared("horse2zebra", "trainB"), h2z / "trainB", 2)
    cut = tmp_path / "cut"
    train(load_recipe("fastcut", tiny("fastcut", [f"data.path={h2z}", "train.max_steps=2"])), cut, quiet=True)
    p = page(write_compare([root, cut], tmp_path / "compare.html"))
    titles = [f["layout"]["title"]["text"] for f in p.figures]
    assert titles[:3] == ["G_GAN", "D_real", "D_fake"] and "G_L1" not in titles and "NCE" not in titles
    for name in ("G_GAN", "D_real", "D_fake"):
        traces = {t["name"]: t for t in p.figure(name)["data"]}
        for folder in (root, cut):
            assert traces[folder.name]["y"] == [x[name] for x in log(folder) if name in x]
    assert [i["alt"] for i in p.images] == [f"{root.name}: step 4", f"{cut.name}: step 2"]
    assert "train.generator" not in p.cells and "method" in p.cells  # the recipe keys that differ
    # the FastCUT run alone: its own loss names, grouped
    single = page(write_report(cut))
    assert {t["name"] for t in single.figure("generator losses")["data"]} == {"G_GAN", "G_GAN (smoothed)"}
    assert single.figure("NCE")


def test_a_long_log_is_thinned_and_the_best_evaluation_marked(tmp_path, monkeypatch):
    """A VAE's long log (written here, as the Trainer writes it): each curve keeps at most MAX_POINTS
    of the logged lines (50 here, for speed), the first and the latest among them, with their logged
    values; the best evaluation is starred (highest PSNR, lowest L1, the first step that reached it)."""
    import translate.training.report

    monkeypatch.setattr(translate.training.report, "MAX_POINTS", 50)
    (tmp_path / "recipe.toml").write_text('method = "vae"\n')
    lines = [{"step": s, "epoch": s // 100, "lr": 1e-3, "images_per_s": 50.0, "loss": 1 / s, "recon": 2 / s,
              "kl": 3 / s} for s in range(1, 1201)]
    evals = [{"step": s, "epoch": s // 100, "split": "val", "eval_psnr": p, "eval_l1": l1}
             for s, p, l1 in [(100, 5.0, 0.5), (200, 7.0, 0.3), (300, 6.0, 0.3)]]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [*lines, *evals]))
    p = page(write_report(tmp_path))
    assert [f["layout"]["title"]["text"] for f in p.figures][:3] == ["loss", "recon", "kl"]
    kl = p.trace("kl")
    assert len(kl["x"]) == 50 and kl["x"][0] == 1 and kl["x"][-1] == 1200
    assert kl["y"] == [3 / s for s in kl["x"]]
    for metric, best in [("psnr", [200, 7.0]), ("l1", [200, 0.3])]:
        star = p.figure(f"eval: {metric}")["data"][1]
        assert [star["x"][0], star["y"][0]] == best, metric
    text = (tmp_path / "report.html").read_text()
    assert "No sample grid yet" in text and "Not recorded" in text and "None written yet" in text


def test_losses_of_every_method_are_grouped_by_their_net():
    assert [loss_group(n) for n in ("G_GAN", "G_L1", "G", "G_A", "G_GAN2", "D", "D2", "D_real", "D_B")] == \
        list("GGGGGDDDD")
    assert [loss_group(n) for n in ("cycle_A", "cycle_B", "idt_A", "kl", "z_L1", "NCE", "W_dist", "GP")] == \
        ["cycle", "cycle", "idt", "kl", "z", "NCE", "W", "GP"]


def test_tensorboard_event_files_hold_the_logged_values(run):
    """TensorBoard's own reader finds every logged loss, lr, eval metric and sample grid at its step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = run
    events = EventAccumulator(str(root), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    lines = log(root)
    for key, tag in [("G_GAN", "loss/G_GAN"), ("D_fake", "loss/D_fake"), ("lr", "train/lr"),
                     ("images_per_s", "train/images_per_s"), ("eval_psnr", "eval/psnr"), ("eval_l1", "eval/l1")]:
        logged = [(x["step"], x[key]) for x in lines if key in x]
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [s for s, _ in logged], tag
        assert [v for _, v in read] == pytest.approx([v for _, v in logged], rel=1e-6), tag  # stored as float32
    grids = sorted(int(p.stem[5:]) for p in (root / "samples").iterdir())
    assert [e.step for e in events.Images("samples")] == grids


def test_tensorboard_events_of_a_resumed_run_hold_each_step_once(run, tmp_path):
    """The run resumed from its save at step 4 for one more epoch: the events before the save stay,
    the new ones follow, each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from translate.training.train import resume

    out = tmp_path / "resumed"
    shutil.copytree(run[0], out)
    resume(out, ["train.epochs=3", "train.eval_every=0", "train.report_every=0"], quiet=True)
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    read = events.Scalars("loss/G_L1")
    logged = [x for x in log(out) if "G_L1" in x]
    assert [e.step for e in read] == [x["step"] for x in logged] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in read] == pytest.approx([x["G_L1"] for x in logged], rel=1e-6)


def test_tensorboard_missing_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    from translate.training.tensorboard import Board

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as without the package: ImportError
    with pytest.raises(TranslateError, match=r"needs the tensorboard package: pip install"):
        Board(tmp_path)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get where absent; the test is skipped (with the reason)
    where it cannot be."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs Chromium (Debian's chromium package) and cannot install it: not root, or no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str, timeout: int) -> str:
        """apt-get's error output ("" when it worked); both calls fit in pytest-timeout's 600 s."""
        try:
            done = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"apt-get {args[0]} took over {timeout} s"
        return done.stderr.strip() if done.returncode else ""

    why = apt("install", "-y", "-q", "chromium", timeout=280)
    if "Unable to locate" in why:  # no package lists yet on a fresh machine
        why = apt("update", "-q", timeout=120) or apt("install", "-y", "-q", "chromium", timeout=280)
    if not shutil.which("chromium"):
        pytest.skip(f"needs Chromium; `apt-get install chromium` failed: {why[-300:]}")
    return shutil.which("chromium")


# Before the page's own scripts: note every console error and uncaught error.
CATCH = """<script>window.__errors = [];
var __error = console.error; console.error = function () { __errors.push(Array.from(arguments).join(" "));
  __error.apply(console, arguments); };
window.addEventListener("error", function (e) { __errors.push(String(e.message)); });
window.addEventListener("unhandledrejection", function (e) { __errors.push(String(e.reason)); });</script>"""
# After them: the drawn size of every plot and image, and the errors, into the DOM that --dump-dom prints.
MEASURE = """<script>setTimeout(function () {
  function size(e) { var r = e.getBoundingClientRect(); return [r.width, r.height]; }
  var out = {errors: window.__errors,
    plots: Array.from(document.querySelectorAll("div.plot")).map(function (d) {
      return {size: size(d), svg: d.querySelector("svg.main-svg") ? size(d.querySelector("svg.main-svg")) : null,
              lines: d.querySelectorAll("path.js-line").length}; }),
    images: Array.from(document.querySelectorAll("img")).map(function (i) {
      return {size: size(i), natural: [i.naturalWidth, i.naturalHeight]}; })};
  var pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1000);</script>"""


def chromium_run(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1280,2400", *args], capture_output=True, text=True, timeout=120)


def test_the_page_draws_in_a_browser(run, chromium, tmp_path):
    """In headless Chromium, from disk: no console error, every plot drawn with its lines and every
    sample grid shown, at a non-zero size; a screenshot of the page is written."""
    root, _ = run
    report = root / "report.html"
    text = report.read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("<head>", "<head>" + CATCH, 1).replace("</body>", MEASURE + "</body>", 1))
    shot = tmp_path / "report.png"
    done = chromium_run(chromium, "--virtual-time-budget=10000", f"--screenshot={shot}", "--dump-dom",
                        checked.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    measured = json.loads(dom[dom.index('<pre id="measured">') + 19:dom.index("</pre>", dom.index('"measured"'))]
                          .replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert measured["errors"] == []
    p = Page(text)
    assert len(measured["plots"]) == len(p.figures) >= 7  # 2 loss groups, lr, images/s, 3 eval metrics
    for plot in measured["plots"]:
        assert min(plot["size"]) > 0 and plot["svg"] and min(plot["svg"]) > 0 and plot["lines"] > 0, plot
    assert len(measured["images"]) == len(p.images) == len(list((root / "samples").iterdir()))
    for image in measured["images"]:
        assert min(image["size"]) > 0 and min(image["natural"]) > 0, image
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        assert len(im.convert("L").getcolors(1 << 16)) > 20  # drawn, not a blank page
