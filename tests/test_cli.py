"""The command line: help for newcomers, one-line errors with exit code 2, summary lines."""
from __future__ import annotations

import subprocess
import sys

import pytest

from raddiffusion.cli import main

COMMANDS = ["demo", "synth", "preprocess", "pretrain", "probe", "finetune", "run", "figures", "report", "plot-probes",
            "embed", "predict", "reconstruct", "export"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raddiffusion", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"raddiffusion {command}" in out
    assert "%%" not in out  # argparse does not %-format descriptions


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize(
    "args",
    [["preprocess", "x", "y", "--image-size", "zero"], ["preprocess", "x"], ["synth", "out", "--format", "png"], ["fly"]],
)
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


def test_missing_tree_is_one_line_exit_2(tmp_path):
    result = _cli("preprocess", str(tmp_path / "nowhere"), str(tmp_path / "store"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nowhere" in result.stderr and "not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_shard_is_one_line_exit_2(small_tree, tmp_path):
    result = _cli("preprocess", str(small_tree.root), str(tmp_path / "store"), "--shard", "3/2")
    assert result.returncode == 2 and "--shard" in result.stderr and "Traceback" not in result.stderr


def test_preprocess_prints_a_summary_line(small_tree, tmp_path):
    result = _cli("preprocess", str(small_tree.root), str(tmp_path / "store"), "--image-size", "16", "--workers", "1")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("preprocess: stored 15 of 15 images") and "none skipped" in last


def test_synth_then_demo_end_to_end(tmp_path):
    result = _cli("synth", str(tmp_path / "tree"), "--subjects", "4", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("synth: wrote") and (tmp_path / "tree" / "files").is_dir()
    again = _cli("synth", str(tmp_path / "tree"), "--subjects", "4")
    assert again.returncode == 2 and "Traceback" not in again.stderr

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "demo.json").write_text('{"subjects": 12, "seed": 0, "epochs": 12}')
    other = _cli("demo", "--out", str(tmp_path / "demo"), "--subjects", "13")
    assert other.returncode == 2 and "--subjects 12" in other.stderr and "Traceback" not in other.stderr


def test_torchrun_relaunch_spells_run_as_run_dir():
    """torchrun reads `--run` anywhere as an abbreviation of its own --run-path; the relaunch avoids it."""
    from raddiffusion.cli import build_parser
    from raddiffusion.train.distributed import torchrun_safe

    argv = ["pretrain", "s", "--run", "r", "--epochs", "1", "--run=x", "--runs"]
    assert torchrun_safe(argv) == ["pretrain", "s", "--run-dir", "r", "--epochs", "1", "--run-dir=x", "--runs"]
    parsed = build_parser().parse_args(["pretrain", "s", "--run-dir", "r"])
    assert str(parsed.run) == "r"
