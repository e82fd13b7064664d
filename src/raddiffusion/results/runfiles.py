"""The names of a run directory's files and the readers that figures and reports share with training."""
from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TEST_METRICS = "test_metrics.json"
TEST_PREDICTIONS = "test_predictions.csv"
PROBE_DIR = "probe"
LOCK = ".lock"  # record-locked (fcntl) by the process training in the run directory; names its pid and host


def run_stores(config: dict) -> list[str]:
    """The stores a run's ``config.json`` names: its ``stores`` (pretraining on several), else its ``store``."""
    if config.get("stores"):
        return list(config["stores"])
    return [config["store"]] if isinstance(config.get("store"), str) else []


def is_finished(run_dir: Path) -> bool:
    """Has the run written its summary (its last file)?"""
    return (run_dir / SUMMARY).is_file()


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a line cut short by a crash is skipped)."""
    path = run_dir / METRICS
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def record_step(line: str) -> float:
    """The step of one ``metrics.jsonl`` line (a damaged line sorts last)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return float("inf")
