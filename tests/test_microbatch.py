"""--micro-batch: the accumulation it implies, the search for the largest that fits, the CPU refusal."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from raddiffusion.cli import main
from raddiffusion.fileio import read_json
from raddiffusion.train.microbatch import accumulation_for, check_micro_batch, largest_fitting, resolve_micro_batch
from test_pretrain import BATCH, _pretrain, store  # noqa: F401  (the store fixture)


def test_accumulation_keeps_micro_batches_at_most_the_size_given():
    assert accumulation_for(512, 8, 4) == 16  # 8 processes × 16 micro-batches of 4 = 512 studies
    assert accumulation_for(8, 1, 3) == 3  # 3 + 3 + 2
    assert accumulation_for(8, 2, 100) == 1


@pytest.mark.parametrize("limit, upper", [(37, 128), (1, 64), (64, 64), (5, 6)])
def test_largest_fitting_finds_the_limit_with_few_tries(limit, upper):
    tried = []

    def fits(n):
        tried.append(n)
        return n <= limit

    assert largest_fitting(upper, fits) == min(limit, upper)
    assert len(tried) <= 2 * upper.bit_length()


def test_nothing_fits_and_bad_values_are_refused():
    with pytest.raises(ValueError, match="not even one study"):
        largest_fitting(16, lambda n: False)
    for bad in (0, -2, 1.5, "some", True):
        with pytest.raises(ValueError, match="micro_batch"):
            check_micro_batch(bad)
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_micro_batch("auto", 8, 1, 2, __import__("torch").device("cpu"), "fp32", lambda: None)


def test_a_micro_batch_size_trains_as_the_accumulation_it_implies(store, tmp_path):  # noqa: F811
    micro = _pretrain(store, tmp_path / "micro", epochs=1, micro_batch=BATCH // 2)
    accumulated = _pretrain(store, tmp_path / "accumulated", epochs=1, accumulation=2)
    train = read_json(tmp_path / "micro" / "config.json")["train"]
    assert (train["micro_batch"], train["accumulation"]) == (BATCH // 2, 2)
    assert micro["final_epoch_loss"] == accumulated["final_epoch_loss"]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("micro", "accumulated"))
    assert all((a[k] == b[k]).all() for k in a)


def test_auto_on_the_cpu_is_one_line_and_exit_2(store, tmp_path, capsys):  # noqa: F811
    code = main(["pretrain", str(store), "--run", str(tmp_path / "run"), "--image-size", "64", "--micro-batch", "auto",
                 "--batch-size", "8", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs a GPU" in err
    with pytest.raises(SystemExit) as usage:  # argparse refuses it: exit 2, usage and one error line
        main(["pretrain", str(store), "--run", str(tmp_path / "r2"), "--micro-batch", "zero"])
    assert usage.value.code == 2 and "neither a number of studies" in capsys.readouterr().err
