"""The demo pipeline end to end at a tiny size: both schemes, the report, the same numbers twice."""
from __future__ import annotations

import json

import pytest

from raddiffusion.demo import DemoSettings, run_demo

TINY = DemoSettings(subjects=16, epochs=2, batch_size=4, probe_every=1, finetune_epochs=1, finetune_patience=1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    first = run_demo(root / "a", TINY, progress=False)
    second = run_demo(root / "b", TINY, progress=False)
    return root, first, second


def _numbers(out, scheme):
    runs = out / "runs" / scheme
    probe = json.loads((runs / "pretrain" / "probe" / "epoch_002.json").read_text())
    test = json.loads((runs / "finetune" / "test_metrics.json").read_text())
    losses = [json.loads(line)["loss"] for line in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return probe["labels"], test["labels"], losses


def test_demo_runs_both_schemes_and_writes_one_report(demos):
    root, first, _ = demos
    assert first == root / "a" / "report.html"
    html = first.read_text()
    for scheme in ("vanilla", "diffusion"):
        runs = root / "a" / "runs" / scheme
        assert (runs / "pretrain" / "summary.json").is_file() and (runs / "finetune" / "test_metrics.json").is_file()
        assert (runs / "pretrain" / "figures" / "reconstruction_epoch_002.png").is_file()
        assert (runs / "finetune" / "figures" / "attention.png").is_file()
        assert f"({scheme})" in html
    assert (root / "a" / "runs" / "diffusion" / "pretrain" / "figures" / "animation.gif").is_file()
    assert "data:image/gif;base64," in html


def test_the_same_seed_gives_the_same_numbers(demos):
    root, _, _ = demos
    for scheme in ("vanilla", "diffusion"):
        assert _numbers(root / "a", scheme) == _numbers(root / "b", scheme)


def test_a_rerun_reuses_the_finished_work(demos, capsys):
    root, first, _ = demos
    weights = root / "a" / "runs" / "vanilla" / "pretrain" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert run_demo(root / "a", TINY, progress=False) == first
    assert weights.stat().st_mtime_ns == before
    assert "reused" in capsys.readouterr().out


def test_other_settings_in_the_same_folder_are_refused(demos):
    root, _, _ = demos
    with pytest.raises(ValueError, match="--epochs 2"):
        run_demo(root / "a", DemoSettings(subjects=16, epochs=3), progress=False)
