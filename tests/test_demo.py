"""The demo pipeline end to end at a tiny size: both schemes, the report, reuse on a re-run.

That one seed gives the same numbers twice is tested where the numbers are made: two pretraining
runs with one seed end with equal weights in tests/test_pretrain.py (resumed or not).
"""
from __future__ import annotations


import pytest

from raddiffusion.demo import DemoSettings, run_demo

TINY = DemoSettings(subjects=16, epochs=2, batch_size=4, probe_every=1, finetune_epochs=1, finetune_patience=1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, run_demo(root / "a", TINY, progress=False)


def test_demo_runs_both_schemes_and_writes_one_report(demos):
    root, first = demos
    assert first == root / "a" / "report.html"
    html = first.read_text()
    for scheme in ("vanilla", "diffusion"):
        runs = root / "a" / "runs" / scheme
        assert (runs / "pretrain" / "summary.json").is_file() and (runs / "finetune" / "test_metrics.json").is_file()
        assert (runs / "pretrain" / "figures" / "reconstruction_epoch_002.png").is_file()
        assert (runs / "finetune" / "figures" / "attention.png").is_file()
        assert f"<h3>{scheme}</h3>" in html and f"({scheme})" not in html  # a run named after its scheme, once
    assert (root / "a" / "runs" / "diffusion" / "pretrain" / "figures" / "animation.gif").is_file()
    assert "data:image/gif;base64," in html


def test_a_rerun_reuses_the_finished_work(demos, capsys):
    root, first = demos
    weights = root / "a" / "runs" / "vanilla" / "pretrain" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert run_demo(root / "a", TINY, progress=False) == first
    assert weights.stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert "reused" in out
    for scheme in ("vanilla", "diffusion"):  # each number names the split it was measured on
        line = next(row for row in out.splitlines() if row.startswith(f"{scheme}: linear probe"))
        assert " on validation; fine-tuned (" in line and line.endswith(" on test"), line


def test_other_settings_in_the_same_folder_are_refused(demos):
    root, _ = demos
    with pytest.raises(ValueError, match="--epochs 2"):
        run_demo(root / "a", DemoSettings(subjects=16, epochs=3), progress=False)
