"""The HTML run report and the plot-probes command, on run directories written by hand."""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raddiffusion.cli import main
from raddiffusion.data.preprocess import preprocess
from raddiffusion.data.store import open_store
from raddiffusion.visual.report import default_report_path, write_report

LABEL_A, LABEL_B = "Cardiomegaly", "Fracture"
DIFF_NAME = "diff<&>"  # a run name that must be escaped
CHROMIUM_TIMEOUT_S = 120
WINDOW = (1280, 4000)


def write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


def gif(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("L", (32, 16), grey).convert("P") for grey in (0, 128, 255)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def probe(epoch: int, auroc: float, auprc: float) -> dict:
    return {"epoch": epoch, "train_studies": 24, "eval_studies": 8,
            "labels": {LABEL_A: {"auroc": auroc, "auprc": auprc, "f1": 0.25, "positives": 3, "negatives": 5},
                       LABEL_B: {"absent": "no positive studies", "positives": 0, "negatives": 8}},
            "mean": {"auroc": auroc, "auprc": auprc, "f1": 0.25, "labels": 1}}


def pretrain_dir(run: Path, scheme: str, store: Path, losses: list[float], probes: list[dict]) -> Path:
    write(run / "config.json", {"command": "pretrain", "store": str(store),
                                "model": {"preset": "xs", "scheme": scheme, "width": 32, "mask_ratio": 0.75},
                                "train": {"epochs": 2, "batch_size": 4, "lr": 0.00014},
                                "data": {"train_studies": 24, "steps_per_epoch": 2}})
    lines = [{"kind": "step", "step": s + 1, "epoch": s // 2 + 1, "loss": loss, "lr": 1e-4, "images_per_s": 9.0}
             for s, loss in enumerate(losses)]
    lines.insert(2, {"kind": "epoch", "step": 2, "epoch": 1, "loss": sum(losses[:2]) / 2, "seconds": 1.0})
    lines.append({"kind": "epoch", "step": 4, "epoch": 2, "loss": sum(losses[2:]) / 2, "seconds": 2.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "st')
    for record in probes:
        write(run / "probe" / f"epoch_{record['epoch']:03d}.json", record)
    write(run / "summary.json", {"command": "pretrain", "scheme": scheme, "steps": 4})
    png(run / "figures" / "reconstruction_epoch_001.png", (200, 30, 30))
    png(run / "figures" / "reconstruction_epoch_002.png", (30, 200, 30))
    return run


def finetune_dir(run: Path, test_auroc: float, finished: bool = True) -> Path:
    write(run / "config.json", {"command": "finetune", "pretrained": str(run.parent / "pretrain"),
                                "model": {"scheme": "vanilla"}, "train": {"epochs": 3, "patience": 5},
                                "data": {"steps_per_epoch": 1}})
    lines = [{"kind": "step", "step": 1, "epoch": 1, "loss": 0.9, "lr": 1e-5},
             {"kind": "epoch", "step": 1, "epoch": 1, "loss": 0.9, "val_loss": 0.81234, "best": True}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    entry = {"auroc": test_auroc, "auprc": 0.4567, "f1": 0.3456, "positives": 2, "negatives": 2}
    write(run / "test_metrics.json", {"studies": 4, "split": "test",
                                      "labels": {LABEL_A: entry, LABEL_B: {"absent": "no positive studies",
                                                                           "positives": 0, "negatives": 4}},
                                      "mean": {"auroc": test_auroc, "auprc": 0.4567, "f1": 0.3456, "labels": 1}})
    if finished:
        write(run / "summary.json", {"best_epoch": 1, "epochs_run": 1, "best_val_loss": 0.81234,
                                     "test": {"studies": 4, "mean": {"auroc": test_auroc}}})
    png(run / "figures" / "attention.png", (30, 30, 200))
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from conftest import small_labels, small_tree_images, write_tree

    root = tmp_path_factory.mktemp("report-store")
    tree = write_tree(root / "mimic", small_tree_images(), small_labels())
    preprocess(tree.root, root / "store", image_size=16, workers=1, progress=False)
    return root / "store"


@pytest.fixture
def runs(tmp_path, store) -> list[Path]:
    """``mae``: pretraining + an unfinished ``finetune`` + a finished ``finetune-2``; ``diff<&>``: pretraining only."""
    mae = tmp_path / "runs" / "mae"
    pretrain_dir(mae / "pretrain", "vanilla", store, [1.25, 1.1, 0.95, 0.9],
                 [probe(0, 0.5123, 0.3012), probe(2, 0.6789, 0.4321)])
    finetune_dir(mae / "finetune", 0.1111, finished=False)
    finetune_dir(mae / "finetune-2", 0.7654)
    diff = tmp_path / "runs" / DIFF_NAME
    pretrain_dir(diff / "pretrain", "diffusion", tmp_path / "no-store", [0.5, 0.4, 0.35, 0.3],
                 [probe(0, 0.4987, 0.2876), probe(1, 0.5555, 0.3333), probe(2, 0.7321, 0.5012)])
    (diff / "pretrain" / "probe" / "epoch_003.json").write_text("{not json")  # a damaged file is skipped
    gif(diff / "pretrain" / "figures" / "animation.gif")
    return [mae, diff]


def report_text(runs: list[Path], tmp_path: Path, **kwargs) -> str:
    out = write_report(runs, tmp_path / "out" / "report.html", **kwargs)
    assert out == tmp_path / "out" / "report.html" and [p.name for p in out.parent.iterdir()] == ["report.html"]
    return out.read_text(encoding="utf-8")


def cell(value: float, decimals: int = 3) -> str:
    return f">{value:.{decimals}f}<"


def test_the_report_is_one_self_contained_file(runs, tmp_path):
    with pytest.warns(UserWarning, match="epoch_003.json"):
        text = report_text(runs, tmp_path)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # images inline, links to sections only
    assert "<script" not in text and "<link" not in text and "url(" not in text


def test_the_report_shows_the_numbers_of_the_run_files(runs, tmp_path):
    with pytest.warns(UserWarning):
        text = report_text(runs, tmp_path)
    assert "mae (vanilla)" in text and html.escape(f"{DIFF_NAME} (diffusion)") in text
    mae, diff = runs
    last_mae = json.loads((mae / "pretrain" / "probe" / "epoch_002.json").read_text())
    first_diff = json.loads((diff / "pretrain" / "probe" / "epoch_000.json").read_text())
    for value in (last_mae["labels"][LABEL_A]["auroc"], last_mae["mean"]["auprc"], first_diff["mean"]["auroc"]):
        assert cell(value) in text
    test = json.loads((mae / "finetune-2" / "test_metrics.json").read_text())
    for metric in ("auroc", "auprc", "f1"):
        assert cell(test["labels"][LABEL_A][metric]) in text
    assert cell(0.1111) not in text  # the unfinished finetune/ is not the one shown
    summary = json.loads((mae / "finetune-2" / "summary.json").read_text())
    assert cell(summary["best_val_loss"], 4) in text
    assert ">0.00014<" in text  # a setting from config.json
    assert html.escape("no positive studies") in text  # why a label has no score


def test_the_report_embeds_the_figures(runs, tmp_path):
    with pytest.warns(UserWarning):
        text = report_text(runs, tmp_path)
    mae, diff = runs
    for path in (mae / "finetune-2" / "figures" / "attention.png", mae / "pretrain" / "figures" /
                 "reconstruction_epoch_001.png", mae / "pretrain" / "figures" / "reconstruction_epoch_002.png"):
        assert f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" in text
    animation = (diff / "pretrain" / "figures" / "animation.gif").read_bytes()
    assert f"data:image/gif;base64,{base64.b64encode(animation).decode()}" in text
    assert text.count("data:image/png;base64,") >= 2 + 2 + 1 + 3  # reconstructions, attention, loss/probe/bars


def test_the_data_summary_counts_the_store(runs, tmp_path, store):
    with pytest.warns(UserWarning):
        text = report_text(runs, tmp_path)
    index = open_store(store).index
    train = index[index["split"] == "train"]
    row = f"<th>train</th><td class=\"num\">{train['study_id'].nunique()}</td><td class=\"num\">{len(train)}</td>"
    assert row in text
    assert html.escape(f"store {tmp_path / 'no-store'} unavailable") in text  # diff's store is gone


def test_missing_files_are_reported_not_raised(runs, tmp_path):
    mae = runs[0]
    (mae / "finetune-2" / "test_metrics.json").unlink()
    (mae / "pretrain" / "metrics.jsonl").unlink()
    shutil.rmtree(mae / "pretrain" / "figures")
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning):
        text = report_text([*runs, empty, tmp_path / "nowhere"], tmp_path)
    assert "no fine-tuning directory" in text  # diff<&> is a pretraining-only experiment
    assert html.escape("no test_metrics.json for: mae (vanilla)") in text
    assert "no reconstruction figures" in text and "no such directory" in text
    assert "empty" in text and "nowhere" in text
    assert "missing: pretrain/metrics.jsonl" in text and "missing: finetune-2/test_metrics.json" in text


def test_text_is_escaped(runs, tmp_path):
    with pytest.warns(UserWarning):
        text = report_text(runs, tmp_path, title="A <b>bold</b> & title")
    assert "<b>bold</b>" not in text and "A &lt;b&gt;bold&lt;/b&gt; &amp; title" in text
    assert DIFF_NAME not in text and html.escape(DIFF_NAME) in text


def test_a_run_named_after_its_scheme_is_not_labelled_twice(runs, tmp_path):
    from raddiffusion.visual.report import find_runs

    named = tmp_path / "runs" / "vanilla"
    shutil.copytree(runs[0], named)
    assert [run.label for run in find_runs([runs[0], named])] == ["mae (vanilla)", "vanilla"]


def test_a_bare_pretraining_or_finetuning_directory_is_a_run(runs, tmp_path):
    text = report_text([runs[0] / "pretrain"], tmp_path)
    assert "mae/pretrain (vanilla)" in text and "a pretraining run alone" in text
    text = report_text([runs[0] / "finetune-2"], tmp_path)  # its config names the pretraining it started from
    assert "mae/finetune-2 (vanilla)" in text and cell(0.7654) in text and cell(0.6789) in text


def test_default_report_paths(tmp_path):
    assert default_report_path([tmp_path / "a"]) == tmp_path / "a" / "report.html"
    assert default_report_path([tmp_path / "x" / "a", tmp_path / "x" / "b"]) == tmp_path / "x" / "report.html"


def test_report_command_prints_the_path(runs, capsys):
    with pytest.warns(UserWarning):
        assert main(["report", *map(str, runs)]) == 0
    expected = runs[0].parent / "report.html"
    assert capsys.readouterr().out.strip() == f"report: {expected} (2 runs)" and expected.is_file()


def test_plot_probes_command_writes_curves_and_bars(runs, tmp_path, capsys):
    with pytest.warns(UserWarning):
        assert main(["plot-probes", *map(str, runs)]) == 0
    curves, bars = runs[0].parent / "probe_curves.png", runs[0].parent / "probe_curves_labels.png"
    out = capsys.readouterr().out
    assert str(curves) in out and str(bars) in out
    for path in (curves, bars):
        with Image.open(path) as image:
            assert image.format == "PNG"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot-probes", str(empty), "--out", str(tmp_path / "p.png")]) == 2  # no probe results: one line


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@pytest.mark.skipif(chromium() is None, reason=f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                                               "install it with `apt-get install chromium`")
def test_chromium_renders_the_report(runs, tmp_path):
    with pytest.warns(UserWarning):
        report = write_report(runs, tmp_path / "report.html")
    screenshot = tmp_path / "report.png"
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={screenshot}",
                           f"--window-size={WINDOW[0]},{WINDOW[1]}", report.resolve().as_uri()],
                          capture_output=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert screenshot.is_file(), (f"{chromium()} wrote no screenshot (exit {done.returncode}): "
                                  f"{done.stderr.decode(errors='replace')[-2000:]}")
    with Image.open(screenshot) as image:
        assert image.size == WINDOW and np.asarray(image.convert("L")).var() > 0


def _prediction_file(path: Path, probabilities: np.ndarray, targets: np.ndarray) -> Path:
    from raddiffusion.results.predictions import Predictions, write_predictions

    n = len(targets)
    write_predictions(Predictions(np.arange(n), np.arange(n), probabilities, targets, np.ones_like(targets, bool),
                                  ("x", "y")), path)
    return path


def test_a_run_is_marked_best_only_beyond_noise(tmp_path):
    from raddiffusion.visual.report import paired_best

    rng = np.random.default_rng(0)
    targets = (rng.random((120, 2)) < 0.5).astype(np.float32)
    good = _prediction_file(tmp_path / "good.csv", targets + rng.normal(0, 0.3, targets.shape), targets)
    same = _prediction_file(tmp_path / "same.csv", targets + rng.normal(0, 0.3, targets.shape), targets)
    noise = _prediction_file(tmp_path / "noise.csv", rng.random(targets.shape), targets)
    flags, text = paired_best(["good", "noise"], [good, noise])
    assert flags == [True, False] and "good is marked best" in text and "good is better" in text
    flags, text = paired_best(["good", "same"], [good, same])
    assert flags == [False, False] and "within noise" in text
    signed = r"[+-]\d\.\d{3}"
    low, high = re.search(rf"(?:good − same|same − good) = {signed} \[({signed}), ({signed})\]", text).groups()
    assert float(low) <= 0 <= float(high)  # both bounds signed, as a difference's interval
    flags, text = paired_best(["good", "missing"], [good, tmp_path / "absent.csv"])
    assert flags == [False, False] and "not every run has per-study predictions" in text


def test_the_report_shows_an_evaluation_grid(runs, tmp_path):
    from raddiffusion.fileio import write_json
    from raddiffusion.visual.report import write_report

    row = {"model": "vanilla", "method": "probe", "fraction": 0.1, "seeds": 3, "studies": 63, "auroc": 0.612,
           "auroc_sd": 0.011, "auroc_ci95": [0.55, 0.67],
           "vs_baseline": {"baseline": "random init", "difference": 0.051, "ci95": [0.012, 0.09], "within_noise": False}}
    base = {**row, "model": "random init", "auroc": 0.561}
    del base["vs_baseline"]
    tuned = {**base, "model": "vanilla", "method": "finetune", "auroc": 0.634, "kept_epochs": [0, 3, 0]}
    write_json(tmp_path / "grid" / "evaluate.json", {"split": "test", "settings": {"seeds": 3},
                                                     "rows": [row, base, tuned]})
    out = write_report(list(runs), tmp_path / "report.html", evaluation=tmp_path / "grid")
    text = out.read_text()
    assert "Label-efficient evaluation" in text and "10 % of the labels" in text
    assert "0.612 ± 0.011 [0.550, 0.670]" in text and "vs random init: +0.051 [+0.012, +0.090]" in text
    assert text.count("epoch kept:") == 1 and "epoch kept: 0, 3, 0" in text  # fine-tuning rows only


FIRST_SCREEN = (1400, 1000)  # a laptop browser's first screen, CSS pixels
MEASURE_SCRIPT = """<script>window.addEventListener("load", () => {
  for (const id of IDS) {
    const box = document.getElementById(id).getBoundingClientRect();
    document.body.setAttribute("data-box-" + id, [box.left, box.top, box.right, box.bottom].join(" "));
  }
});</script>"""


@pytest.mark.skipif(chromium() is None, reason=f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                                               "install it with `apt-get install chromium`")
def test_the_first_screen_holds_the_headline_figure_and_the_test_table(runs, tmp_path):
    from raddiffusion.fileio import write_json
    from raddiffusion.visual.report import HEADLINE_ID, HEADLINE_TABLE_ID

    row = {"model": "vanilla", "method": "probe", "fraction": 0.1, "seeds": 3, "studies": 63, "auroc": 0.612,
           "auroc_sd": 0.011, "auroc_ci95": [0.55, 0.67],
           "vs_baseline": {"baseline": "random init", "difference": 0.014, "ci95": [-0.02, 0.05], "within_noise": True}}
    write_json(tmp_path / "grid" / "evaluate.json", {"split": "test", "settings": {"seeds": 3},
                                                     "rows": [row, {**row, "fraction": 1.0}]})
    with pytest.warns(UserWarning):
        report = write_report(runs, tmp_path / "report.html", evaluation=tmp_path / "grid")
    text = report.read_text()
    assert "vanilla − random init, linear probe" in text and "+0.014 [-0.020, +0.050] within noise" in text
    ids = [HEADLINE_ID, HEADLINE_TABLE_ID]
    measured = tmp_path / "measured.html"
    measured.write_text(text.replace("</body>", MEASURE_SCRIPT.replace("IDS", json.dumps(ids)) + "</body>"))
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           f"--window-size={FIRST_SCREEN[0]},{FIRST_SCREEN[1]}", "--dump-dom", measured.resolve().as_uri()],
                          capture_output=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    dom = done.stdout.decode(errors="replace")
    for name in ids:
        found = re.search(rf'data-box-{name}="([^"]+)"', dom)
        assert found, f"Chromium measured no #{name} (exit {done.returncode}): {done.stderr.decode(errors='replace')[-800:]}"
        left, top, right, bottom = map(float, found[1].split())
        assert 0 <= left and right <= FIRST_SCREEN[0] and 0 <= top and bottom <= FIRST_SCREEN[1], (name, found[1])
        assert bottom - top > 40  # drawn, not collapsed


def test_log_axes_are_labelled_without_mathtext(tmp_path, store, monkeypatch):
    """Mathtext (matplotlib's default for log ticks) looks up Computer Modern fonts and can warn about them."""
    import matplotlib.mathtext

    from raddiffusion.visual.report import evaluation_figure, find_runs, loss_figure

    def refuse(*args, **kwargs):
        raise AssertionError("a figure rendered mathtext")

    monkeypatch.setattr(matplotlib.mathtext.MathTextParser, "parse", refuse)
    rows = [{"model": "vanilla", "method": "probe", "fraction": f, "auroc": 0.6 + f / 10, "auroc_sd": 0.01}
            for f in (0.01, 0.1, 1.0)]
    assert evaluation_figure(rows).startswith(b"\x89PNG")
    run = pretrain_dir(tmp_path / "steep" / "pretrain", "vanilla", store, [80.0, 9.0, 1.2, 0.5], [probe(0, 0.5, 0.3)])
    assert loss_figure(find_runs([run.parent])).startswith(b"\x89PNG")  # losses over 160x: a log axis
