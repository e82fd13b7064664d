"""Linear-probe curves across runs: mean AUROC / AUPRC vs epoch, and per-label AUROC bars.

A run directory holds ``probe/epoch_NNN.json`` files (one per probed epoch) and, optionally,
``config.json`` with ``{"model": {"scheme": ..., "preset": ...}}`` for the run's label.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from ..results.runfiles import CONFIG, PROBE_DIR
from .reconstruction import framed_figure, save_figure

PROBE_GLOB = "epoch_*.json"
CHANCE_AUROC = 0.5
METRICS = (("auroc", "mean AUROC"), ("auprc", "mean AUPRC"))
CURVE_PANEL = (5.0, 3.6)  # inches
CURVE_LEFT, CURVE_GAP, AXIS_INCHES = 0.7, 0.8, 0.5  # inches: y labels, between panels, x labels
BAR_ROW_INCHES = 0.42  # per label in the bar chart
BAR_GROUP_FILL = 0.8  # share of a label's row the bars of all runs take
BARS_WIDTH, BARS_LEFT = 6.0, 2.2  # inches: plot width, room for the label names
LEGEND_ROW_INCHES = 0.22  # one run in a legend under the bars
MARKER, LINE_WIDTH = "o", 1.5
TITLE_SIZE, LABEL_SIZE, NOTE_SIZE = 12, 9, 8
MISSING_TEXT, MISSING_X = "n/a", 0.01  # the mark of an absent label and where it sits on the AUROC axis


def read_probe_history(run_dir: Path) -> list[dict]:
    """The probe results of a run, sorted by epoch; unreadable or malformed files are skipped with a warning."""
    history = []
    for path in sorted((Path(run_dir) / PROBE_DIR).glob(PROBE_GLOB)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError
            warnings.warn(f"skipping probe file {path}: {error}", stacklevel=2)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            warnings.warn(f"skipping probe file {path}: no integer 'epoch'", stacklevel=2)
            continue
        history.append(record)
    return sorted(history, key=lambda record: record["epoch"])


def run_scheme(run_dir: Path) -> str | None:
    """The run's ``model.scheme`` from its ``config.json``, or ``None`` when it cannot be read."""
    try:
        config = json.loads((Path(run_dir) / CONFIG).read_text())
        scheme = config["model"]["scheme"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return scheme if isinstance(scheme, str) else None


def run_label(run_dir: Path) -> str:
    """``"<dir name> (<scheme>)"``, or the directory name when it already names the scheme or the config
    does not say it."""
    return scheme_label(Path(run_dir).name, run_scheme(run_dir))


def scheme_label(name: str, scheme: str | None) -> str:
    """``"<name> (<scheme>)"``, or ``name`` alone when it already names the scheme or there is none."""
    return f"{name} ({scheme})" if scheme and scheme not in name else name


def metric_value(summary: object, metric: str) -> float:
    """``summary[metric]`` as a float, NaN where it is missing or null."""
    value = summary.get(metric) if isinstance(summary, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def runs_with_history(run_dirs: list[Path], labels: list[str] | None) -> list[tuple[str, list[dict]]]:
    """``(label, history)`` of every run with at least one probe file; ``ValueError`` if there is none."""
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    names = labels if labels is not None else [run_label(run) for run in run_dirs]
    runs = [(name, read_probe_history(run)) for name, run in zip(names, run_dirs)]
    found = [(name, history) for name, history in runs if history]
    if not found:
        raise ValueError(f"no probe results ({PROBE_DIR}/{PROBE_GLOB}) in any of {len(run_dirs)} run directories")
    return found


def plot_metric(ax: Axes, runs: list[tuple[str, list[dict]]], metric: str, name: str) -> None:
    """One line with markers per run: the mean ``metric`` vs epoch."""
    for label, history in runs:
        epochs = [record["epoch"] for record in history]
        values = [metric_value(record.get("mean"), metric) for record in history]
        ax.plot(epochs, values, marker=MARKER, linewidth=LINE_WIDTH, label=label)
    ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
    ax.set_ylabel(name, fontsize=LABEL_SIZE)
    ax.set_title(f"linear probe: {name}", fontsize=LABEL_SIZE + 1)
    ax.grid(alpha=0.3)


def probe_curves_figure(run_dirs: list[Path], path: Path, labels: list[str] | None = None) -> Path:
    """Write a PNG: mean AUROC and mean AUPRC of the linear probe vs epoch, one line per run.

    ``labels`` name the runs in the legend (default ``"<dir name> (<scheme>)"``). Runs without probe
    files are left out; ``ValueError`` if no run has any.
    """
    runs = runs_with_history(run_dirs, labels)
    fig, axes = framed_figure(1, len(METRICS), "Linear probe during pretraining",
                              "dashed: chance AUROC 0.5; AUPRC chance is each label's prevalence",
                              panel=CURVE_PANEL, left=CURVE_LEFT, gap=CURVE_GAP, axis=AXIS_INCHES)
    for ax, (metric, name) in zip(axes[0], METRICS):
        plot_metric(ax, runs, metric, name)
    axes[0, 0].axhline(CHANCE_AUROC, linestyle="--", color="grey", linewidth=1, label="chance")
    axes[0, 0].legend(fontsize=LABEL_SIZE)
    return save_figure(fig, path)


def last_label_auroc(history: list[dict]) -> dict[str, float]:
    """Per-label AUROC at the last probe epoch; NaN for labels marked absent."""
    labels = history[-1].get("labels")
    labels = labels if isinstance(labels, dict) else {}
    return {name: metric_value(entry, "auroc") for name, entry in labels.items()}


def draw_bars(ax: Axes, names: list[str], runs: list[tuple[str, dict[str, float]]]) -> None:
    """Grouped horizontal bars, one group per label; a missing value gets an ``n/a`` mark, no bar."""
    height = BAR_GROUP_FILL / len(runs)
    rows = np.arange(len(names))
    for k, (label, scores) in enumerate(runs):
        offsets = rows - BAR_GROUP_FILL / 2 + (k + 0.5) * height
        values = np.array([scores.get(name, math.nan) for name in names])
        ax.barh(offsets, np.nan_to_num(values, nan=0.0), height=height, label=label)
        for y in offsets[np.isnan(values)]:
            ax.text(MISSING_X, y, MISSING_TEXT, va="center", fontsize=NOTE_SIZE, color="dimgrey", style="italic")
    ax.set_yticks(rows, names, fontsize=LABEL_SIZE)
    ax.invert_yaxis()


def label_bars_figure(run_dirs: list[Path], path: Path) -> Path:
    """Write a PNG: per-label AUROC of each run at its last probe epoch, grouped horizontal bars.

    Labels absent from a run's evaluation (too few positives or negatives) are drawn as ``n/a``, not 0.
    """
    runs = runs_with_history(run_dirs, None)
    scored = [(f"{label}, epoch {history[-1]['epoch']}", last_label_auroc(history)) for label, history in runs]
    names = list(dict.fromkeys(name for _, scores in scored for name in scores))
    if not names:
        raise ValueError("the last probe files hold no per-label results")
    note = "dashed: chance AUROC 0.5"
    if any(math.isnan(scores.get(name, math.nan)) for _, scores in scored for name in names):
        note += f"; {MISSING_TEXT}: label absent from that run's evaluation (no score, not 0)"
    panel = (BARS_WIDTH, len(names) * BAR_ROW_INCHES)
    fig, axes = framed_figure(1, 1, "Per-label AUROC at the last probe epoch", note, panel=panel, left=BARS_LEFT,
                              axis=AXIS_INCHES + len(scored) * LEGEND_ROW_INCHES)
    ax = axes[0, 0]
    draw_bars(ax, names, scored)
    ax.axvline(CHANCE_AUROC, linestyle="--", color="grey", linewidth=1)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LABEL_SIZE, loc="upper center", bbox_to_anchor=(0.5, -AXIS_INCHES / panel[1]), frameon=False)
    return save_figure(fig, path)
