"""One self-contained HTML report of one or more runs: the result first, then probes, test metrics, the grid,
figures, losses, data, runs and (folded) settings.

The first screen answers the question: the probe curves, each run's test and probe means with intervals, and the
paired comparisons in words ("within noise" when the interval holds 0), with the grid's differences from its
baselines when there is one.

A run is an experiment directory ``NAME/`` (``pretrain/`` and ``finetune``, ``finetune-2``, ...: the
highest-numbered finished one is shown), or a bare pretraining or fine-tuning run directory. Every
number shown is read from the run's files; a missing file is named in the report, never an error.
Images are embedded as base64 data URIs and the CSS is inline: the file is readable offline, alone.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FuncFormatter, NullFormatter
from PIL import Image

from ..fileio import atomic_path, read_json
from ..results.compare import compare_predictions, signed_interval, verdict
from ..results.evaluation import (
    EVALUATE_JSON,
    KEPT_EPOCHS_NOTE,
    METHOD_NAMES,
    difference_text,
    fraction_name,
    kept_epochs_text,
    row_text,
)
from ..results.metrics import CI_SUFFIX, DECIMALS, METRICS, format_interval
from ..results.predictions import PREDICTIONS_SUFFIX, PredictionsError, read_predictions
from ..results.metrics import label_metrics
from ..results.runfiles import CONFIG, PROBE_DIR, SUMMARY, TEST_PREDICTIONS, read_metrics, run_stores
from ..results.runfiles import METRICS as METRICS_FILE
from .curves import (
    AXIS_INCHES,
    CURVE_GAP,
    CURVE_LEFT,
    CURVE_PANEL,
    label_bars_figure,
    probe_curves_figure,
    read_probe_history,
    scheme_label,
)
from .reconstruction import DPI, framed_figure

REPORT_FILE = "report.html"
PRETRAIN_DIR, FINETUNE_DIR = "pretrain", "finetune"
FINETUNE_PATTERN = re.compile(r"finetune(?:-(\d+))?")
TEST_METRICS, FIGURES = "test_metrics.json", "figures"
PROBE_FILES = "probe/epoch_*.json"
RECONSTRUCTION_GLOB, RECONSTRUCTION_PATTERN = "reconstruction_epoch_*.png", re.compile(r"reconstruction_epoch_(\d+)")
ANIMATION, ATTENTION = "animation.gif", "attention.png"
PROBE_CURVES_FILE = "probe_curves.png"  # plot-probes' default name
BARS_SUFFIX = "_labels"  # plot-probes: the per-label bars beside the curves, PNG name + this
DIFFUSION_SCHEME = "diffusion"
SPLITS_SHOWN = ("train", "validate", "test")
LOSS_DECIMALS = 4
LIST_DIGITS = 3  # significant digits of the numbers of a list setting (pos_weight)
MISSING_VALUE = "n/a"
NO_SETTING = "–"
STEP_ALPHA, STEP_WIDTH, EPOCH_MARKER, VAL_MARKER = 0.35, 0.8, "o", "s"
LOG_SCALE_RATIO = 20.0  # a loss panel spanning more than this factor gets a log y axis
LABEL_SIZE = 9
EVALUATION_WIDTH, EVALUATION_HEIGHT = 7.0, 4.0  # inches
CHANCE_AUROC = 0.5
EVALUATION_ANCHOR = "evaluation"
ANSWER_ANCHOR, HEADLINE_ID, HEADLINE_TABLE_ID = "result", "headline", "headline-table"
HEADLINE_MAX_PX = 1100  # the headline figure's widest display: it and the table below it fit a laptop's first screen
SMALL_IMAGE_PX, MAX_ENLARGEMENT = 480, 4  # images narrower than this are enlarged (tiny studies' GIFs)
TIME_FORMAT = "%Y-%m-%d %H:%M UTC"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1500px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 24px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin: 16px 0 6px; }
p.note { color: #555; margin: 2px 0 10px; }
p.missing, span.missing { color: #a0331a; }
nav a { margin-right: 12px; }
code { font-size: 12px; background: #f3f3f3; padding: 0 3px; border-radius: 3px; word-break: break-all; }
.wrap { overflow-x: auto; margin-bottom: 10px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d6d6d6; padding: 3px 8px; vertical-align: top; }
th { background: #f2f4f7; text-align: left; font-weight: 600; }
td { max-width: 420px; overflow-wrap: anywhere; }
.tables td { max-width: 260px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #888; font-style: italic; text-align: right; }
tr.differs td { background: #fff6d6; }
tr.mean td, tr.mean th { font-weight: 600; border-top: 2px solid #999; }
b.best { color: #0b6b2e; }
.tables { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
.tables > div { min-width: 0; max-width: 100%; }
figure img.small { image-rendering: pixelated; }
.grid { display: grid; grid-template-columns: repeat(var(--columns), minmax(0, 1fr)); gap: 16px;
        align-items: start; }
figure { margin: 0 0 12px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e2e2e2; }
figcaption { font-size: 12px; color: #555; margin-top: 2px; }
details > summary { cursor: pointer; font-size: 19px; font-weight: 600; margin: 32px 0 8px; padding-bottom: 4px;
                    border-bottom: 1px solid #ccc; }
""" + f"#{HEADLINE_ID} img {{ max-width: min(100%, {HEADLINE_MAX_PX}px); }}\n"


@dataclass
class RunFiles:
    """Where one run's files are: its pretraining and fine-tuning directories (``None`` when there is none)."""

    source: Path
    name: str
    pretrain: Path | None
    finetune: Path | None
    notes: list[str] = field(default_factory=list)
    label: str = ""

    def pretrain_config(self) -> dict | None:
        return read_optional(self.pretrain / CONFIG) if self.pretrain else None

    def finetune_config(self) -> dict | None:
        return read_optional(self.finetune / CONFIG) if self.finetune else None

    def scheme(self) -> str | None:
        for config in (self.pretrain_config(), self.finetune_config()):
            model = config.get("model") if config else None
            if isinstance(model, dict) and isinstance(model.get("scheme"), str):
                return model["scheme"]
        return None


# reading ------------------------------------------------------------------------------------------------------------

def read_optional(path: Path) -> dict | None:
    """A JSON object from ``path``, or ``None`` when the file is missing, unreadable or not an object."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finetune_number(path: Path) -> int | None:
    """1 for ``finetune``, N for ``finetune-N``, ``None`` for any other name."""
    match = FINETUNE_PATTERN.fullmatch(path.name)
    return None if match is None else int(match[1] or 1)


def chosen_finetune(experiment: Path) -> tuple[Path | None, list[str]]:
    """The highest-numbered finished fine-tuning of an experiment (else the highest unfinished one), and notes."""
    found = sorted((p for p in experiment.iterdir() if p.is_dir() and finetune_number(p) is not None),
                   key=finetune_number) if experiment.is_dir() else []
    finished = [p for p in found if (p / SUMMARY).is_file()]
    if finished:
        return finished[-1], []
    if found:
        return found[-1], [f"{found[-1].name}: fine-tuning not finished (no {SUMMARY})"]
    return None, [f"no fine-tuning directory ({FINETUNE_DIR}, {FINETUNE_DIR}-2, ...)"]


def run_kind(path: Path) -> str:
    """``pretrain``, ``finetune`` (a bare run directory) or ``experiment``."""
    command = (read_optional(path / CONFIG) or {}).get("command")
    if command in ("pretrain", "finetune"):
        return command
    if (path / PRETRAIN_DIR).is_dir() or any(finetune_number(p) for p in path.glob(f"{FINETUNE_DIR}*")):
        return "experiment"
    if path.name == PRETRAIN_DIR:
        return "pretrain"
    return "finetune" if finetune_number(path) is not None else "experiment"


def display_name(path: Path, kind: str) -> str:
    """The experiment's directory name; ``NAME/pretrain`` for a bare run directory of a standard name."""
    if kind != "experiment" and (path.name == PRETRAIN_DIR or finetune_number(path) is not None):
        return f"{path.parent.name}/{path.name}"
    return path.name


def find_run(path: Path) -> RunFiles:
    """The directories of a run given as an experiment, pretraining or fine-tuning directory."""
    path = Path(path)
    kind = run_kind(path)
    name = display_name(path.resolve(), kind)
    if not path.is_dir():
        return RunFiles(path, name, None, None, [f"{path}: no such directory"])
    if kind == "pretrain":
        return RunFiles(path, name, path, None, ["a pretraining run alone: no fine-tuning"])
    if kind == "finetune":
        pretrained = (read_optional(path / CONFIG) or {}).get("pretrained")
        linked = Path(pretrained) if isinstance(pretrained, str) and Path(pretrained).is_dir() else None
        notes = [] if linked else ["a fine-tuning run alone: its pretraining directory is not at hand"]
        return RunFiles(path, name, linked, path, notes)
    pretrain = path / PRETRAIN_DIR
    finetune, notes = chosen_finetune(path)
    if not pretrain.is_dir():
        notes.insert(0, f"no {PRETRAIN_DIR}/ directory")
    return RunFiles(path, name, pretrain if pretrain.is_dir() else None, finetune, notes)


def find_runs(paths: Iterable[Path]) -> list[RunFiles]:
    """:func:`find_run` of every path, each labelled ``NAME (scheme)``, duplicates numbered."""
    runs = [find_run(Path(p)) for p in paths]
    seen: dict[str, int] = {}
    for run in runs:
        label = scheme_label(run.name, run.scheme())
        seen[label] = seen.get(label, 0) + 1
        run.label = label if seen[label] == 1 else f"{label} #{seen[label]}"
    return runs


def missing_files(run: RunFiles) -> list[str]:
    """The expected files of a run that are not there (relative to the run's source directory)."""
    missing = []
    expected = [(run.pretrain, (CONFIG, METRICS_FILE, SUMMARY)),
                (run.finetune, (CONFIG, METRICS_FILE, TEST_METRICS, SUMMARY))]
    for directory, names in expected:
        missing += [shown_path(run, directory / n) for n in names if directory and not (directory / n).is_file()]
    if run.pretrain:
        if not list(run.pretrain.glob(PROBE_FILES)):
            missing.append(shown_path(run, run.pretrain / PROBE_FILES))
        if not reconstruction_files(run.pretrain):
            missing.append(shown_path(run, run.pretrain / FIGURES / RECONSTRUCTION_GLOB))
        if run.scheme() == DIFFUSION_SCHEME and not (run.pretrain / FIGURES / ANIMATION).is_file():
            missing.append(shown_path(run, run.pretrain / FIGURES / ANIMATION))
    if run.finetune and not (run.finetune / FIGURES / ATTENTION).is_file():
        missing.append(shown_path(run, run.finetune / FIGURES / ATTENTION))
    return missing


def shown_path(run: RunFiles, path: Path) -> str:
    """``path`` relative to the run's source directory when it lies inside it, else as given."""
    try:
        return str(path.relative_to(run.source))
    except ValueError:
        return str(path)


def reconstruction_files(pretrain: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the reconstruction figures of a pretraining run, by epoch."""
    found = []
    for path in (pretrain / FIGURES).glob(RECONSTRUCTION_GLOB):
        match = RECONSTRUCTION_PATTERN.fullmatch(path.stem)
        if match:
            found.append((int(match[1]), path))
    return sorted(found)


# formatting ---------------------------------------------------------------------------------------------------------

def esc(value: object) -> str:
    """Any value as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: object, decimals: int = DECIMALS) -> str:
    """A finite number with ``decimals`` decimals, else ``n/a``."""
    return f"{value:.{decimals}f}" if is_number(value) else MISSING_VALUE


def setting(value: object) -> str:
    """A configuration value as compact text (floats ``g``-formatted, lists joined)."""
    if value is None:
        return NO_SETTING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(f"{v:.{LIST_DIGITS}g}" if isinstance(v, float) else setting(v) for v in value)
    return str(value)


def number_cell(value: object, decimals: int = DECIMALS, best: bool = False, reason: str | None = None) -> str:
    """A right-aligned ``<td>`` of a number (bold when ``best``), or an ``n/a`` cell titled with ``reason``."""
    if not is_number(value):
        title = f' title="{esc(reason)}"' if reason else ""
        return f'<td class="na"{title}>{MISSING_VALUE}</td>'
    text = esc(number(value, decimals))
    return f'<td class="num">{f"<b class=best>{text}</b>" if best else text}</td>'


def table(header: list[str], rows: list[str], header_rows: list[str] | None = None, table_id: str | None = None) -> str:
    """A scrollable table: ``header`` cells are escaped; ``rows`` are ready ``<tr>`` strings."""
    head = header_rows or ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    identity = f' id="{esc(table_id)}"' if table_id else ""
    return f'<div class="wrap"><table{identity}><thead>{"".join(head)}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_figure(data: bytes, mime: str, caption: str, anchor: str | None = None) -> str:
    """An embedded image with a caption; a small one is shown enlarged by a whole factor, pixels kept sharp."""
    scale = enlargement(data)
    size = f' class="small" style="width: {scale * image_width(data)}px"' if scale > 1 else ""
    identity = f' id="{esc(anchor)}"' if anchor else ""
    return (f'<figure{identity}><img src="{data_uri(data, mime)}" alt="{esc(caption)}"{size}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def image_width(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return image.width


def enlargement(data: bytes) -> int:
    """The whole factor (at most :data:`MAX_ENLARGEMENT`) that brings an image near :data:`SMALL_IMAGE_PX` wide."""
    try:
        width = image_width(data)
    except (OSError, ValueError):
        return 1
    return max(1, min(MAX_ENLARGEMENT, SMALL_IMAGE_PX // max(width, 1)))


def file_figure(path: Path, caption: str, anchor: str | None = None) -> str:
    mime = "image/gif" if path.suffix.lower() == ".gif" else "image/png"
    return image_figure(path.read_bytes(), mime, caption, anchor)


def columns(cells: list[str]) -> str:
    """Cells side by side, one column each."""
    inner = "".join(f"<div>{cell}</div>" for cell in cells)
    return f'<div class="grid" style="--columns: {max(1, len(cells))}">{inner}</div>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def folded_section(anchor: str, title: str, body: str) -> str:
    """A section shown by its title alone until opened."""
    return f'<details id="{esc(anchor)}"><summary>{esc(title)}</summary>{body}</details>'


# sections -----------------------------------------------------------------------------------------------------------

def runs_section(runs: list[RunFiles]) -> str:
    """Per run: its directories, status and the files that are missing."""
    rows = []
    for run in runs:
        problems = [f"missing: {name}" for name in missing_files(run)] + run.notes
        status = "".join(f'<li class="missing">{esc(p)}</li>' for p in problems) or "<li>all files present</li>"
        rows.append(f"<tr><th>{esc(run.label)}</th><td><code>{esc(run.source)}</code></td>"
                    f"<td>{directory_cell(run.pretrain)}</td><td>{directory_cell(run.finetune)}</td>"
                    f"<td><ul>{status}</ul></td></tr>")
    return section("runs", "Runs", table(["run", "directory", "pretraining", "fine-tuning", "missing / notes"], rows))


def directory_cell(path: Path | None) -> str:
    if path is None:
        return '<span class="missing">none</span>'
    state = "finished" if (path / SUMMARY).is_file() else "not finished"
    return f"<code>{esc(path.name)}</code> ({state})"


def flatten(settings: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"a.b": value}``."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_rows(configs: list[dict | None], parts: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[dict]:
    """Per run, the flattened ``parts`` of its config (``data.*`` keys prefixed) and the ``extra`` top-level keys."""
    flats = []
    for config in configs:
        config = config or {}
        flat = {key: config.get(key) for key in extra if key in config}
        for part in parts:
            values = config.get(part)
            if isinstance(values, dict):
                flat |= flatten(values, "" if part in ("model", "train") else f"{part}.")
        flats.append(flat)
    return flats


def settings_table(labels: list[str], flats: list[dict]) -> str:
    """Settings as rows, runs as columns; rows whose values differ between runs are highlighted."""
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    rows = []
    for key in keys:
        values = [setting(flat.get(key)) if key in flat else NO_SETTING for flat in flats]
        differs = len(flats) > 1 and len(set(values)) > 1
        cells = "".join(f"<td>{esc(v)}</td>" for v in values)
        rows.append(f'<tr{" class=differs" if differs else ""}><th>{esc(key)}</th>{cells}</tr>')
    return table(["setting", *labels], rows)


def configuration_section(runs: list[RunFiles]) -> str:
    """Model, pretraining and fine-tuning settings of every run, side by side."""
    labels = [run.label for run in runs]
    pretrain = [run.pretrain_config() for run in runs]
    finetune = [run.finetune_config() for run in runs]
    parts = []
    model = [p if p and "model" in p else f for p, f in zip(pretrain, finetune)]
    for title, configs, keys, extra in (("Model", model, ("model",), ()),
                                        ("Pretraining", pretrain, ("train", "data"), ("stores", "datasets", "probe_store")),
                                        ("Fine-tuning", finetune, ("train", "data"), ("store", "dataset", "pretrained", "pretrained_on"))):
        flats = config_rows(configs, keys, extra)
        body = settings_table(labels, flats) if any(flats) else ""
        body += absent_configs(runs, configs, title != "Fine-tuning")
        parts.append(f"<div><h3>{esc(title)}</h3>{body}</div>")
    intro = note("Rows whose values differ between runs are highlighted.") if len(runs) > 1 else ""
    return folded_section("configuration", "Configuration (click to open)",
                          f'{intro}<div class="tables">{"".join(parts)}</div>')


def absent_configs(runs: list[RunFiles], configs: list[dict | None], pretraining: bool) -> str:
    """Which runs have no such run directory, and which have one without a readable ``config.json``."""
    directories = [run.pretrain if pretraining else run.finetune for run in runs]
    none = [run.label for run, d in zip(runs, directories) if d is None]
    unread = [run.label for run, d, c in zip(runs, directories, configs) if d is not None and c is None]
    kind = "pretraining" if pretraining else "fine-tuning"
    return ((missing(f"no {kind} run: {', '.join(none)}") if none else "")
            + (missing(f"no readable {CONFIG} for: {', '.join(unread)}") if unread else ""))


def stores_of(run: RunFiles, store: Path | None) -> list[tuple[str, Path]]:
    """``(role, path)`` of each store a run used: the one given, else the pretraining store(s) and the
    fine-tuning (evaluation) store named in its configs."""
    if store is not None:
        return [("given", Path(store))]
    found = []
    pretrain, finetune = run.pretrain_config() or {}, run.finetune_config() or {}
    found += [("pretraining", Path(path)) for path in run_stores(pretrain)]
    if isinstance(finetune.get("store"), str):
        found.append(("fine-tuning and test", Path(finetune["store"])))
    return found


def open_counts(store_path: Path) -> tuple[object, list[tuple[str, int, int, int]]]:
    """The opened store and ``(split, studies, images, labelled studies)`` per split, then the total."""
    from ..data.store import open_store

    store = open_store(store_path)
    index, labelled = store.index, store.labels.index
    splits = [*SPLITS_SHOWN, *sorted(set(index["split"]) - set(SPLITS_SHOWN))]
    counts = []
    for split, rows in [*((s, index[index["split"] == s]) for s in splits), ("all", index)]:
        studies = rows["study_id"].drop_duplicates()
        counts.append((split, len(studies), len(rows), int(studies.isin(labelled).sum())))
    return store, counts


def store_table(store_path: Path) -> str:
    """The store's dataset and label set, and its per-split counts, or why they are not available."""
    from ..data.tree import DataError

    try:
        store, counts = open_counts(store_path)
    except (DataError, OSError, ValueError, KeyError) as error:
        return missing(f"store {store_path} unavailable: {error}")
    rows = [f'<tr{" class=mean" if split == "all" else ""}><th>{esc(split)}</th>'
            + "".join(f'<td class="num">{value}</td>' for value in values) + "</tr>"
            for split, *values in counts]
    labels = note(f"dataset {store.dataset}; {len(store.label_names)} labels: {', '.join(store.label_names)}")
    return labels + table(["split", "studies", "images", "labelled studies"], rows)


def data_section(runs: list[RunFiles], store: Path | None) -> str:
    """Dataset, label set and studies, images and labelled studies per split of each store the runs used."""
    stores: dict[str, list[str]] = {}
    unknown = []
    for run in runs:
        used = stores_of(run, store)
        if not used:
            unknown.append(run.label)
        for role, path in used:
            stores.setdefault(str(path), []).append(f"{run.label} ({role})" if role != "given" else run.label)
    parts = [f"<h3>store <code>{esc(path)}</code></h3>{note('used by: ' + ', '.join(labels))}"
             + store_table(Path(path)) for path, labels in stores.items()]
    if unknown:
        parts.append(missing(f"no store known (none given, none in {CONFIG}) for: {', '.join(unknown)}"))
    source = "the store given on the command line" if store is not None else f"the store named in each run's {CONFIG}"
    return section("data", "Data", note(f"Counts read from {source}.") + "".join(parts))


def figure_png(fig) -> bytes:
    """A Matplotlib figure rendered with Agg as PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def records(run_dir: Path | None, kind: str) -> list[dict]:
    """The ``kind`` records (``step`` or ``epoch``) of a run's metrics with a numeric loss."""
    if run_dir is None:
        return []
    return [r for r in read_metrics(run_dir) if r.get("kind") == kind and is_number(r.get("loss"))
            and is_number(r.get("step"))]


def loss_axis(ax: Axes, values: list[float], name: str) -> None:
    """Label the y axis ``name``; log scale when the positive ``values`` span more than :data:`LOG_SCALE_RATIO`."""
    if values and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO:
        ax.set_yscale("log")
        plain_ticks(ax.yaxis, "{:g}")
        name += " (log scale)"
    ax.set_ylabel(name, fontsize=LABEL_SIZE)


def plain_ticks(axis, template: str) -> None:
    """Tick labels of a log axis as plain text (``template.format(value)``), no minor labels.

    Matplotlib writes log ticks as mathtext (``10⁻¹``), whose renderer looks up Computer Modern fonts and warns about
    them where a font cache lacks them: a warning no user can act on.
    """
    axis.set_major_formatter(FuncFormatter(lambda value, _: template.format(value)))
    axis.set_minor_formatter(NullFormatter())


def plot_pretrain_losses(ax: Axes, runs: list[RunFiles]) -> None:
    """Per run: the loss of every step (thin) and the epoch means (markers), against the step."""
    shown = []
    for k, run in enumerate(runs):
        steps, epochs = records(run.pretrain, "step"), records(run.pretrain, "epoch")
        colour = f"C{k}"
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=colour, alpha=STEP_ALPHA,
                linewidth=STEP_WIDTH)
        ax.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], color=colour, marker=EPOCH_MARKER,
                label=f"{run.label}: epoch mean")
        shown += [r["loss"] for r in steps + epochs]
    loss_axis(ax, shown, "loss")
    ax.set_xlabel("step", fontsize=LABEL_SIZE)
    ax.set_title("pretraining loss (thin: every step)", fontsize=LABEL_SIZE + 1)


def steps_per_epoch(run_dir: Path, epochs: list[dict]) -> float | None:
    """Steps per epoch from the run's config, else from its epoch records."""
    data = (read_optional(run_dir / CONFIG) or {}).get("data")
    value = data.get("steps_per_epoch") if isinstance(data, dict) else None
    if is_number(value) and value > 0:
        return float(value)
    first = next((r for r in epochs if is_number(r.get("epoch")) and r["epoch"] > 0), None)
    return first["step"] / first["epoch"] if first else None


def plot_finetune_losses(ax: Axes, runs: list[RunFiles]) -> None:
    """Per run: training loss per step (thin) and per epoch, validation loss per epoch (dashed), against epochs."""
    shown = []
    for k, run in enumerate(runs):
        if run.finetune is None:
            continue
        steps, epochs = records(run.finetune, "step"), records(run.finetune, "epoch")
        colour, per_epoch = f"C{k}", steps_per_epoch(run.finetune, epochs)
        if per_epoch:
            ax.plot([r["step"] / per_epoch for r in steps], [r["loss"] for r in steps], color=colour,
                    alpha=STEP_ALPHA, linewidth=STEP_WIDTH)
        ax.plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], color=colour, marker=EPOCH_MARKER,
                label=f"{run.label}: train")
        validated = [r for r in epochs if is_number(r.get("val_loss"))]
        ax.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], color=colour, linestyle="--",
                marker=VAL_MARKER, label=f"{run.label}: validation")
        shown += [r["loss"] for r in steps + epochs] + [r["val_loss"] for r in validated]
    loss_axis(ax, shown, "BCE loss")
    ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
    ax.set_title("fine-tuning loss (thin: every step)", fontsize=LABEL_SIZE + 1)


def loss_figure(runs: list[RunFiles]) -> bytes:
    """PNG: pretraining loss per step with epoch means | fine-tuning train and validation loss."""
    fig, axes = framed_figure(1, 2, "Training losses", "pretraining: x = step; fine-tuning: x = epoch "
                              "(steps as fractions of an epoch); dashed: validation loss",
                              panel=CURVE_PANEL, left=CURVE_LEFT, gap=CURVE_GAP, axis=AXIS_INCHES)
    plot_pretrain_losses(axes[0, 0], runs)
    plot_finetune_losses(axes[0, 1], runs)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=LABEL_SIZE - 1)
    return figure_png(fig)


def loss_table(runs: list[RunFiles]) -> str:
    """Per run: last pretraining epoch loss, fine-tuning epoch kept and its validation loss, epochs run."""
    rows = []
    for run in runs:
        epochs = records(run.pretrain, "epoch")
        summary = (read_optional(run.finetune / SUMMARY) if run.finetune else None) or {}
        last = epochs[-1] if epochs else {}
        rows.append(f"<tr><th>{esc(run.label)}</th><td class=num>{esc(last.get('epoch', MISSING_VALUE))}</td>"
                    f"{number_cell(last.get('loss'), LOSS_DECIMALS)}"
                    f"<td class=num>{esc(summary.get('best_epoch', MISSING_VALUE))}</td>"
                    f"<td class=num>{esc(summary.get('epochs_run', MISSING_VALUE))}</td>"
                    f"{number_cell(summary.get('best_val_loss'), LOSS_DECIMALS)}</tr>")
    return table(["run", "pretraining epochs logged", "last epoch loss", "fine-tuning epoch kept (0: probe head)",
                  "epochs run", "its validation loss"], rows)


def losses_section(runs: list[RunFiles]) -> str:
    """The loss figure and a table of the final values; the runs without metrics are named."""
    absent = [f"{run.label}: {part} {METRICS_FILE}" for run in runs
              for part, d in (("pretraining", run.pretrain), ("fine-tuning", run.finetune))
              if d is None or not (d / METRICS_FILE).is_file()]
    has_any = any(records(run.pretrain, "step") or records(run.finetune, "step") for run in runs)
    body = image_figure(loss_figure(runs), "image/png", "training losses") if has_any else ""
    body += loss_table(runs)
    if absent:
        body += missing("missing: " + "; ".join(absent))
    return section("losses", "Loss curves", body)


def probe_entry(record: dict, label: str) -> dict:
    labels = record.get("labels")
    entry = labels.get(label) if isinstance(labels, dict) else None
    return entry if isinstance(entry, dict) else {}


def mean_of(record: dict | None, metric: str) -> object:
    mean = record.get("mean") if record else None
    return mean.get(metric) if isinstance(mean, dict) else None


def best_flags(values: list[object]) -> list[bool]:
    """True where a value is the highest of several runs' finite values (none with one run, or all equal)."""
    finite = [v for v in values if is_number(v)]
    if len(values) < 2 or len(set(finite)) < 2:
        return [False] * len(values)
    return [is_number(v) and v == max(finite) for v in values]


def paired_best(labels: list[str], files: list[Path | None]) -> tuple[list[bool], str]:
    """Which run, if any, has a mean AUROC higher than every other's beyond noise, and a sentence saying so.

    The run with the highest mean AUROC is compared with each other run on their per-study
    predictions (paired patient bootstrap); it is marked best only when every interval of the
    difference excludes 0. Runs without comparable predictions are never marked.
    """
    none = [False] * len(files)
    if len(files) < 2:
        return none, ""
    if any(f is None or not f.is_file() for f in files):
        return none, "No run is marked best: not every run has per-study predictions to compare."
    try:
        predictions = [read_predictions(f) for f in files]
        means = [label_metrics(p.probabilities, p.targets, p.mask, resamples=0, labels=p.labels)["mean"]["auroc"]
                 for p in predictions]
        top = max(range(len(files)), key=lambda k: -1.0 if means[k] is None else means[k])
        results = [(k, compare_predictions(predictions[top], predictions[k])["difference"])
                   for k in range(len(files)) if k != top]
    except PredictionsError as error:
        return none, f"No run is marked best: {error}."
    parts = [f"{labels[top]} − {labels[k]} = {d['difference']:+.3f} {signed_interval(d['ci95'])}: "
             f"{verdict(d, labels[top], labels[k])}" for k, d in results]
    established = all(not d["within_noise"] for _, d in results)
    flags = [established and k == top for k in range(len(files))]
    outcome = f"{labels[top]} is marked best." if established else "No run is marked best (within noise)."
    return flags, ("Mean AUROC, paired patient bootstrap (95 %): " + "; ".join(parts) + ". " + outcome)


def interval_row(name: str, intervals: list[object]) -> str:
    """A row of ``[low, high]`` intervals, one per run (``n/a`` where there is none)."""
    cells = "".join(f'<td class="num">{esc(format_interval(v))}</td>' if isinstance(v, list) and len(v) == 2
                    else f'<td class="na">{MISSING_VALUE}</td>' for v in intervals)
    return f"<tr><th>{esc(name)}</th>{cells}</tr>"


def metric_row(name: str, values: list[object], reasons: list[str | None] | None = None, mean: bool = False,
               highlight: bool = False, flags: list[bool] | None = None) -> str:
    """A row of one number per run; bold where ``flags`` says (or, with ``highlight``, the highest of several)."""
    reasons = reasons or [None] * len(values)
    flags = flags or (best_flags(values) if highlight else [False] * len(values))
    cells = "".join(number_cell(v, DECIMALS, best, reason) for v, best, reason in zip(values, flags, reasons))
    return f'<tr{" class=mean" if mean else ""}><th>{esc(name)}</th>{cells}</tr>'


def probe_table(runs: list[RunFiles], histories: list[list[dict]]) -> str:
    """Per-label AUROC at each run's last probe epoch, the means, and the initialised encoder's (epoch 0)."""
    lasts = [history[-1] if history else None for history in histories]
    firsts = [next((r for r in history if r["epoch"] == 0), None) for history in histories]
    names = list(dict.fromkeys(n for last in lasts if last and isinstance(last.get("labels"), dict)
                               for n in last["labels"]))
    rows = []
    for name in names:
        entries = [probe_entry(last, name) if last else {} for last in lasts]
        rows.append(metric_row(name, [e.get("auroc") for e in entries], [e.get("absent") for e in entries]))
    last_auroc, first_auroc = [mean_of(r, "auroc") for r in lasts], [mean_of(r, "auroc") for r in firsts]
    gains = [a - b if is_number(a) and is_number(b) else None for a, b in zip(last_auroc, first_auroc)]
    flags, _ = probe_comparison(runs, lasts)
    rows += [metric_row("mean AUROC", last_auroc, mean=True, flags=flags),
             interval_row("mean AUROC, 95 % interval", [mean_of(r, "auroc" + CI_SUFFIX) for r in lasts]),
             metric_row("mean AUROC, epoch 0 (initialised encoder)", first_auroc),
             metric_row("gain over the initialised encoder", gains),
             metric_row("mean AUPRC", [mean_of(r, "auprc") for r in lasts]),
             interval_row("mean AUPRC, 95 % interval", [mean_of(r, "auprc" + CI_SUFFIX) for r in lasts]),
             metric_row("mean AUPRC, epoch 0", [mean_of(r, "auprc") for r in firsts]),
             count_row("labels scored", [mean_of(r, "labels") for r in lasts]),
             count_row("train / evaluated studies", [studies_text(r) for r in lasts])]
    header = ["label", *(f"{run.label}: AUROC, epoch {last['epoch']}" if last else f"{run.label}: no probe"
                         for run, last in zip(runs, lasts))]
    return table(header, rows)


def probe_comparison(runs: list[RunFiles], lasts: list[dict | None]) -> tuple[list[bool], str]:
    """:func:`paired_best` of the runs' last probes (their ``epoch_NNN.predictions.csv``)."""
    files = [run.pretrain / PROBE_DIR / f"epoch_{last['epoch']:03d}{PREDICTIONS_SUFFIX}" if run.pretrain and last
             else None for run, last in zip(runs, lasts)]
    return paired_best([run.label for run in runs], files)


def studies_text(record: dict | None) -> str | None:
    if not record or "train_studies" not in record:
        return None
    return f"{record['train_studies']} / {record.get('eval_studies', MISSING_VALUE)}"


def count_row(name: str, values: list[object]) -> str:
    cells = "".join(f'<td class="num">{esc(v)}</td>' if v is not None else f'<td class="na">{MISSING_VALUE}</td>'
                    for v in values)
    return f"<tr><th>{esc(name)}</th>{cells}</tr>"


def answer_section(runs: list[RunFiles], histories: list[list[dict]], evaluation: Path | None) -> str:
    """The first screen: the probe curves (the headline figure), each run's test and probe means with their
    intervals, and what the paired comparisons say, in words; with a grid, what pretraining added at each fraction."""
    probed = [(run, run.pretrain) for run, history in zip(runs, histories) if history]
    body = ""
    if probed:
        with tempfile.TemporaryDirectory() as tmp:
            curves = probe_curves_figure([p for _, p in probed], Path(tmp) / "curves.png",
                                         [run.label for run, _ in probed])
            body += file_figure(curves, "linear probe: mean AUROC and AUPRC by epoch (train → validate)",
                                anchor=HEADLINE_ID)
    else:
        body += missing(f"no probe results ({PROBE_FILES}) in any run: no probe curve")
    tests = [read_optional(run.finetune / TEST_METRICS) if run.finetune else None for run in runs]
    lasts = [history[-1] if history else None for history in histories]
    body += headline_table(runs, tests, lasts)
    tested = [(run, result) for run, result in zip(runs, tests) if result]
    sentences = [paired_best([run.label for run, _ in tested], [run.finetune / TEST_PREDICTIONS for run, _ in tested])[1]
                 if len(tested) > 1 else "",
                 probe_comparison(runs, lasts)[1]]
    prefixes = ("Test, fine-tuned: ", "Linear probe, last epoch: ")
    body += "".join(note(prefix + text) for prefix, text in zip(prefixes, sentences) if text)
    if evaluation is not None:
        body += pretraining_added(read_optional(evaluation / EVALUATE_JSON))
    return section(ANSWER_ANCHOR, "Result", body)


def headline_table(runs: list[RunFiles], tests: list[dict | None], lasts: list[dict | None]) -> str:
    """One row per run: test mean AUROC and AUPRC with 95 % intervals, and the last probe's mean AUROC."""
    rows = []
    for run, test, last in zip(runs, tests, lasts):
        cells = "".join(mean_cell(record, metric) for record, metric in ((test, "auroc"), (test, "auprc"),
                                                                           (last, "auroc")))
        studies = test.get("studies", MISSING_VALUE) if test else MISSING_VALUE
        probe_epoch = f"epoch {last['epoch']}" if last else MISSING_VALUE
        rows.append(f"<tr><th>{esc(run.label)}</th>{cells}<td class=num>{esc(studies)}</td>"
                    f"<td class=num>{esc(probe_epoch)}</td></tr>")
    header = ["run", "test mean AUROC [95 %]", "test mean AUPRC [95 %]", "probe mean AUROC [95 %]", "test studies",
              "probe epoch"]
    return table(header, rows, table_id=HEADLINE_TABLE_ID)


def mean_cell(record: dict | None, metric: str) -> str:
    """``0.712 [0.650, 0.771]``: a record's mean of ``metric`` with its interval (``n/a`` without one)."""
    value = mean_of(record, metric)
    if not is_number(value):
        return f'<td class="na">{MISSING_VALUE}</td>'
    return f'<td class="num">{esc(number(value))} {esc(format_interval(mean_of(record, metric + CI_SUFFIX)))}</td>'


def pretraining_added(evaluation: dict | None) -> str:
    """The grid's paired differences from the baseline (random init / from scratch), model and method × fraction."""
    rows = (evaluation or {}).get("rows")
    if not isinstance(rows, list) or not rows:
        return missing("no readable evaluation grid")
    compared = [r for r in rows if r.get("vs_baseline")]
    if not compared:
        return note("The evaluation grid has no baseline to compare with (run evaluate with --baselines).")
    fractions = sorted({r["fraction"] for r in compared})
    by_key = {(r["model"], r["method"], r["fraction"]): r for r in compared}
    lines = []
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in compared):
        baseline = next(r["vs_baseline"]["baseline"] for r in compared if (r["model"], r["method"]) == (model, method))
        cells = "".join(f'<td class="num">{esc(difference_text(by_key.get((model, method, f))))}</td>'
                        for f in fractions)
        lines.append(f"<tr><th>{esc(model)} − {esc(baseline)}, {esc(METHOD_NAMES.get(method, method))}</th>{cells}</tr>")
    header = ["what pretraining added (mean AUROC, paired 95 %)", *(f"{fraction_name(f)} of the labels"
                                                                   for f in fractions)]
    return table(header, lines)


def probe_section(runs: list[RunFiles], histories: list[list[dict]], bars_dirs: list[Path]) -> str:
    """The probe table (last epoch per label, means, epoch 0) and the per-label bars."""
    pretrains = [run.pretrain for run in runs]
    probed = [(run, p) for run, p, h in zip(runs, pretrains, histories) if h]
    absent = [run.label for run, h in zip(runs, histories) if not h]
    body = note("Logistic regression per label on frozen study vectors: fit on train, scored on validate. "
                "Epoch 0 is the initialised encoder. n/a: label absent from the evaluation (hover for why).")
    if probed:
        body += note("The curves by epoch lead the report (Result).")
        body += probe_table(runs, histories)
        comparison = probe_comparison(runs, [h[-1] if h else None for h in histories])[1]
        body += note(comparison) if comparison else ""
        body += bars_figure_html([d for d, h in zip(bars_dirs, histories) if h])
    if absent:
        body += missing(f"no probe results ({PROBE_FILES}) for: {', '.join(absent)}")
    return section("probe", "Linear probe", body)


def bars_figure_html(dirs: list[Path]) -> str:
    """The per-label AUROC bars (:func:`label_bars_figure`) embedded, or why there are none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = label_bars_figure(dirs, Path(tmp) / "bars.png")
        except ValueError as error:
            return missing(f"no per-label bars: {error}")
        return file_figure(path, "per-label AUROC at each run's last probe epoch")


def labelled_links(runs: list[RunFiles], root: Path) -> list[Path]:
    """Links named ``NAME`` (the run's name) to each pretraining directory, so figures label runs by name.

    :func:`label_bars_figure` names a run by its directory; an experiment's is always ``pretrain``.
    """
    links = []
    for k, run in enumerate(runs):
        link = root / f"{k:02d}" / re.sub(r"[^\w.+-]+", "_", run.name)
        link.parent.mkdir()
        if run.pretrain is not None:
            link.symlink_to(run.pretrain.resolve(), target_is_directory=True)
        links.append(link)
    return links


def finetune_test_section(runs: list[RunFiles]) -> str:
    """Per-label AUROC / AUPRC / F1 of each fine-tuned model on the test split, and the means."""
    results = [read_optional(run.finetune / TEST_METRICS) if run.finetune else None for run in runs]
    shown = [(run, result) for run, result in zip(runs, results) if result]
    absent = [run.label for run, result in zip(runs, results) if not result]
    body = ""
    if shown:
        flags, comparison = paired_best([run.label for run, _ in shown],
                                        [run.finetune / TEST_PREDICTIONS for run, _ in shown])
        body = finetune_test_table(shown, flags) + (note(comparison) if comparison else "")
    if absent:
        body += missing(f"no {TEST_METRICS} for: {', '.join(absent)}")
    return section("test", "Fine-tuning: test split", body)


def finetune_test_table(shown: list[tuple[RunFiles, dict]], best: list[bool]) -> str:
    """Labels as rows; per run one column per metric; the means last."""
    names = list(dict.fromkeys(n for _, result in shown if isinstance(result.get("labels"), dict)
                               for n in result["labels"]))
    top = "<tr><th rowspan=2>label</th>" + "".join(
        f"<th colspan={len(METRICS)}>{esc(run.label)} ({esc(result.get('studies', MISSING_VALUE))} "
        f"{esc(result.get('split', 'test'))} studies)</th>" for run, result in shown) + "</tr>"
    second = "<tr>" + "".join(f"<th>{m.upper()}</th>" for _ in shown for m in METRICS) + "</tr>"
    rows = [finetune_test_row(name, [probe_entry(result, name) for _, result in shown]) for name in names]
    means = [result.get("mean") if isinstance(result.get("mean"), dict) else {} for _, result in shown]
    rows.append(finetune_test_row("mean", means, mean=True, best=best))
    rows.append(finetune_interval_row(means))
    return table([], rows, header_rows=[top, second])


def finetune_test_row(name: str, entries: list[dict], mean: bool = False, best: list[bool] | None = None) -> str:
    """One row of the test table: every run's metrics; a run's mean AUROC in bold when it is ``best``."""
    best = best or [False] * len(entries)
    cells = "".join(number_cell(entry.get(metric), best=best[k] and metric == "auroc", reason=entry.get("absent"))
                    for k, entry in enumerate(entries) for metric in METRICS)
    return f'<tr{" class=mean" if mean else ""}><th>{esc(name)}</th>{cells}</tr>'


def finetune_interval_row(means: list[dict]) -> str:
    """The 95 % intervals of each run's mean AUROC and AUPRC (F1 has none)."""
    cells = "".join(f'<td class="num">{esc(format_interval(mean.get(metric + CI_SUFFIX)))}</td>'
                    for mean in means for metric in METRICS)
    return f"<tr><th>95 % interval</th>{cells}</tr>"


def evaluation_section(directory: Path) -> str:
    """The label-efficient grid of ``raddiffusion evaluate``: its figure, its table and what pretraining added."""
    evaluation = read_optional(directory / EVALUATE_JSON)
    if evaluation is None or not isinstance(evaluation.get("rows"), list) or not evaluation["rows"]:
        return section(EVALUATION_ANCHOR, "Label-efficient evaluation", missing(f"no readable {directory / EVALUATE_JSON}"))
    rows = evaluation["rows"]
    settings = evaluation.get("settings", {})
    body = note(f"Mean AUROC on the {evaluation.get('split', 'test')} split ({rows[0].get('studies')} studies) by "
                f"share of the train labels used: mean over {settings.get('seeds', '?')} seeds ± sd, and the 95 % "
                f"patient-bootstrap interval of the seed mean. The difference from the baseline (random init for "
                f"probes, from scratch for fine-tuning) is paired: the same patient resamples score both.")
    body += image_figure(evaluation_figure(rows), "image/png", "mean AUROC by label fraction")
    body += evaluation_table(rows)
    return section(EVALUATION_ANCHOR, "Label-efficient evaluation", body)


def evaluation_table(rows: list[dict]) -> str:
    """(model, method) rows × fraction columns: ``mean ± sd [interval]`` and the difference from the baseline."""
    fractions = sorted({r["fraction"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    by_key = {(r["model"], r["method"], r["fraction"]): r for r in rows}
    lines = []
    for model, method in keys:
        cells = ""
        for fraction in fractions:
            row = by_key.get((model, method, fraction))
            cells += f'<td class="num">{esc(row_text(row))}{baseline_line(row)}{kept_line(row)}</td>'
        lines.append(f"<tr><th>{esc(model)}, {esc(METHOD_NAMES.get(method, method))}</th>{cells}</tr>")
    return table(["model, method", *(f"{fraction_name(f)} of the labels" for f in fractions)], lines)


def kept_line(row: dict | None) -> str:
    """A fine-tuning cell's last line: the epoch each seed kept (0: the linear-probe head)."""
    if not (row or {}).get("kept_epochs"):
        return ""
    return f'<br><small title="{esc(KEPT_EPOCHS_NOTE)}">epoch kept: {esc(kept_epochs_text(row))}</small>'


def baseline_line(row: dict | None) -> str:
    """A second line in a cell: the paired difference from the baseline, bold beyond noise (green if a gain)."""
    compared = (row or {}).get("vs_baseline")
    if not compared or not compared.get("ci95"):
        return ""
    text = f"vs {compared['baseline']}: {difference_text(row)}"
    if compared["within_noise"]:
        return f"<br><small>{esc(text)}</small>"
    style = " class=best" if compared["difference"] > 0 else ""  # green only where pretraining helped
    return f"<br><small><b{style}>{esc(text)}</b></small>"


def evaluation_figure(rows: list[dict]) -> bytes:
    """Mean AUROC against the label fraction (log axis), one line per model and method, bars = sd over seeds."""
    figure, axes = framed_figure(1, 1, "Label-efficient evaluation", "error bars: sd over seeds; dotted: chance",
                                 panel=(EVALUATION_WIDTH, EVALUATION_HEIGHT), left=CURVE_LEFT, axis=AXIS_INCHES)
    ax = axes[0, 0]
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        line = sorted((r for r in rows if (r["model"], r["method"]) == (model, method) and is_number(r.get("auroc"))),
                      key=lambda r: r["fraction"])
        if line:
            ax.errorbar([r["fraction"] for r in line], [r["auroc"] for r in line],
                        yerr=[r.get("auroc_sd") or 0.0 for r in line], marker="o", capsize=3,
                        label=f"{model}, {METHOD_NAMES.get(method, method)}")
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["fraction"] for r in rows}))
    plain_ticks(ax.xaxis, "{:.0%}")
    ax.axhline(CHANCE_AUROC, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("share of the train labels used")
    ax.set_ylabel("mean AUROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=LABEL_SIZE - 1)
    return figure_png(figure)


def reconstruction_column(run: RunFiles) -> str:
    """The latest reconstruction figure of a run, and the first one too when there are several."""
    files = reconstruction_files(run.pretrain) if run.pretrain else []
    if not files:
        where = run.pretrain / FIGURES if run.pretrain else "pretraining directory"
        return f"<h3>{esc(run.label)}</h3>" + missing(f"no reconstruction figures in {where}")
    shown = [(files[-1], "latest")] + ([(files[0], "first")] if len(files) > 1 else [])
    figures = "".join(file_figure(path, f"{run.label}: epoch {epoch} ({which})") for (epoch, path), which in shown)
    return f"<h3>{esc(run.label)}</h3>{figures}"


def single_figure_column(run: RunFiles, directory: Path | None, name: str, caption: str, absent: str) -> str:
    """One figure file of a run, or ``absent`` (HTML: why it is not shown)."""
    heading = f"<h3>{esc(run.label)}</h3>"
    if directory is not None and (directory / FIGURES / name).is_file():
        return heading + file_figure(directory / FIGURES / name, f"{run.label}: {caption}")
    return heading + absent


def figures_sections(runs: list[RunFiles]) -> str:
    """Reconstructions, diffusion animations and attention maps, runs side by side."""
    reconstructions = columns([reconstruction_column(run) for run in runs])
    animations = []
    for run in runs:
        vanilla = run.scheme() is not None and run.scheme() != DIFFUSION_SCHEME
        reason = (note(f"{run.scheme()} scheme: no reverse diffusion to animate") if vanilla
                  else missing(f"missing: {shown_path(run, (run.pretrain or run.source) / FIGURES / ANIMATION)}"))
        animations.append(single_figure_column(run, run.pretrain, ANIMATION, "reverse diffusion", reason))
    attention = []
    for run in runs:
        where = shown_path(run, (run.finetune or run.source) / FIGURES / ATTENTION)
        attention.append(single_figure_column(run, run.finetune, ATTENTION, "CLS attention of the fine-tuned encoder",
                                              missing(f"missing: {where}")))
    return (section("reconstructions", "Reconstructions", note("Original | masked input | reconstruction, per view.")
                    + reconstructions)
            + section("animation", "Reverse-diffusion animation", columns(animations))
            + section("attention", "Attention maps", columns(attention)))


NAVIGATION = ((ANSWER_ANCHOR, "Result"), ("probe", "Linear probe"), ("test", "Test"), (EVALUATION_ANCHOR, "Evaluation"),
              ("reconstructions", "Reconstructions"), ("animation", "Animation"), ("attention", "Attention"),
              ("losses", "Losses"), ("data", "Data"), ("runs", "Runs"), ("configuration", "Configuration"))


def header_html(title: str, runs: list[RunFiles], evaluation: bool = False) -> str:
    """The title, the generation note and links to the sections (the evaluation's only when it is shown)."""
    stamp = time.strftime(TIME_FORMAT, time.gmtime())
    sources = ", ".join(f"<code>{esc(run.source)}</code>" for run in runs)
    links = "".join(f'<a href="#{anchor}">{esc(name)}</a>' for anchor, name in NAVIGATION
                    if evaluation or anchor != EVALUATION_ANCHOR)
    return (f"<header><h1>{esc(title)}</h1><p class=note>Generated {esc(stamp)} by <code>raddiffusion report</code> "
            f"from {len(runs)} run director{'y' if len(runs) == 1 else 'ies'}: {sources}. Every number is read "
            f"from the run files.</p><nav>{links}</nav></header>")


def report_html(runs: list[RunFiles], title: str, store: Path | None, link_root: Path,
                evaluation: Path | None = None) -> str:
    """The whole HTML document."""
    histories = [read_probe_history(run.pretrain) if run.pretrain else [] for run in runs]
    body = "".join([
        header_html(title, runs, evaluation is not None), answer_section(runs, histories, evaluation),
        probe_section(runs, histories, labelled_links(runs, link_root)), finetune_test_section(runs),
        evaluation_section(evaluation) if evaluation else "", figures_sections(runs), losses_section(runs),
        data_section(runs, store), runs_section(runs), configuration_section(runs),
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def default_report_path(runs: list[Path]) -> Path:
    """``RUN/report.html`` for one run; ``<common parent>/report.html`` for several."""
    return common_directory(runs) / REPORT_FILE


def common_directory(runs: list[Path]) -> Path:
    """The run itself for one run, else the deepest directory that holds them all."""
    if not runs:
        raise ValueError("no run directories given")
    if len(runs) == 1:
        return Path(runs[0])
    return Path(os.path.commonpath([Path(run).resolve() for run in runs]))


def write_report(runs: list[Path], out: Path, store: Path | None = None, title: str | None = None,
                 evaluation: Path | None = None) -> Path:
    """Write one self-contained HTML report of ``runs`` to ``out`` (atomically); returns ``out``.

    ``store`` is used for the data summary (default: the store named in each run's config);
    ``evaluation`` is a folder written by ``raddiffusion evaluate``, shown as its own section. Missing
    files are named in the report; ``ValueError`` only when no run is given.
    """
    if not runs:
        raise ValueError("no run directories given")
    found = find_runs(runs)
    title = title or "Run report: " + " vs ".join(run.label for run in found)
    with tempfile.TemporaryDirectory() as links:
        document = report_html(found, title, store, Path(links), evaluation)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return out


def plot_probes(runs: list[Path], out: Path) -> tuple[Path, Path]:
    """Mean AUROC / AUPRC curves of the runs' linear probes at ``out`` and per-label bars beside it."""
    found = find_runs(runs)
    pretrains = [run.pretrain for run in found if run.pretrain is not None]
    labels = [run.label for run in found if run.pretrain is not None]
    if not pretrains:
        raise ValueError(f"no pretraining directory in any of {len(runs)} runs")
    out = Path(out)
    curves = probe_curves_figure(pretrains, out, labels)
    with tempfile.TemporaryDirectory() as links:
        dirs = labelled_links([run for run in found if run.pretrain is not None], Path(links))
        bars = label_bars_figure(dirs, out.with_name(f"{out.stem}{BARS_SUFFIX}{out.suffix or '.png'}"))
    return curves, bars

