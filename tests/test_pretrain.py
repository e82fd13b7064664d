"""Pretraining runs: files and metrics, exact resume after SIGKILL, DDP = accumulation, errors, the command."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import raddiffusion as rd
from raddiffusion.cli import main
from raddiffusion.data.preprocess import preprocess
from raddiffusion.fileio import read_json
from raddiffusion.models import MAE, DiffMAE, from_config, model_config
from raddiffusion.train.checkpoint import CheckpointError
from raddiffusion.train.batches import EpochPlan, micro_batch_generator
from raddiffusion.train.loop import TrainingError
from raddiffusion.train.optim import build_optimizer, warmup_cosine
from raddiffusion.train.pretrain import pretrain
from raddiffusion.results.runfiles import CHECKPOINT, read_metrics
from raddiffusion.train.runs import RunError, load_checkpoint

from conftest import TreeImage, labels_row, write_tree

SIZE = 64
TINY = {"preset": "xs", "scheme": "vanilla", "image_size": SIZE, "patch_size": 16, "width": 32, "depth": 2,
        "heads": 2, "mlp_hidden": 64, "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_hidden": 32}
SCHEMES = {"vanilla": TINY, "diffusion": TINY | {"scheme": "diffusion", "decoder_depth": 2}}
TRAIN_STUDIES, VALIDATE_STUDIES, TEST_STUDIES = 24, 8, 4
BATCH = 4
STEPS_PER_EPOCH = TRAIN_STUDIES // BATCH
BASE_TRAIN = {"epochs": 1, "batch_size": BATCH, "workers": 0, "probe_every": 0, "save_every": 100, "lr": 1e-3}
PROBED = ["Cardiomegaly", "Edema", "Pleural_Effusion"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """24 train, 8 validate and 4 test studies of 1-3 views of distinct greys; three labels vary by study."""
    root = tmp_path_factory.mktemp("pretrain")
    images, labels = [], {}
    for s in range(TRAIN_STUDIES + VALIDATE_STUDIES + TEST_STUDIES):
        split = "train" if s < TRAIN_STUDIES else "validate" if s < TRAIN_STUDIES + VALIDATE_STUDIES else "test"
        prefix = {"train": 10 + s % 8, "validate": 18, "test": 19}[split]  # the folder rule agrees with the split
        subject, study = prefix * 1_000_000 + s, 50_000_000 + s
        for k, view in enumerate(["PA", "LATERAL", "AP"][: 1 + s % 3]):
            images.append(TreeImage(subject, study, f"{study:08d}-{k:02d}", view, (s * 37 + k * 90) % 256, split))
        labels[study] = labels_row(**{name: float((s >> j) & 1) for j, name in enumerate(PROBED)})
    write_tree(root / "mimic", images, labels)
    preprocess(root / "mimic", root / "store", image_size=SIZE, workers=1, progress=False)
    return root / "store"


def _pretrain(store: Path, run: Path, scheme: str = "vanilla", model: dict | None = None, resume: bool = False,
              **train) -> dict:
    return pretrain(store, run, model=SCHEMES[scheme] | (model or {}), train=BASE_TRAIN | train, resume=resume,
                    device="cpu", progress=False)


def _steps(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == "step"]


def _epochs(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == "epoch"]


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=0.0, atol=atol, msg=name)


def _no_temporary_files(run: Path) -> None:
    assert not [p for p in run.rglob(".*") if ".tmp-" in p.name]


# 1. end to end ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["vanilla", "diffusion"])
def test_pretraining_writes_the_run_and_lowers_the_loss(store, tmp_path, scheme):
    run = tmp_path / "run"
    epochs = 3
    summary = _pretrain(store, run, scheme, epochs=epochs, probe_every=2, save_every=4)
    total = epochs * STEPS_PER_EPOCH

    assert read_json(run / "summary.json") == summary
    assert (summary["command"], summary["scheme"], summary["epochs"], summary["steps"]) == (
        "pretrain", scheme, epochs, total)
    config = read_json(run / "config.json")
    assert config["model"] == model_config(**SCHEMES[scheme]).to_dict()
    assert (config["train"]["epochs"], config["train"]["batch_size"], config["train"]["probe_every"]) == (epochs, BATCH, 2)
    assert config["data"] == {"train_studies": TRAIN_STUDIES, "steps_per_epoch": STEPS_PER_EPOCH,
                              "train_images": sum(1 + s % 3 for s in range(TRAIN_STUDIES)),
                              "train_studies_per_store": [TRAIN_STUDIES]}
    assert config["stores"] == [str(store)] and config["datasets"] == ["mimic"] and config["probe_store"] == str(store)

    records = read_metrics(run)
    steps, epoch_records = _steps(run), _epochs(run)
    assert len(records) == len(steps) + len(epoch_records)
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    assert [r["epoch"] for r in steps] == [1 + i // STEPS_PER_EPOCH for i in range(total)]
    assert [(r["epoch"], r["step"]) for r in epoch_records] == [(e, e * STEPS_PER_EPOCH) for e in range(1, epochs + 1)]
    for r in steps:
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0
        assert r["lr"] == pytest.approx(1e-3 * warmup_cosine(r["step"] - 1, total, 0.05))
    for e, record in enumerate(epoch_records):
        in_epoch = [r["loss"] for r in steps[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH]]
        assert record["loss"] == pytest.approx(sum(in_epoch) / len(in_epoch))
    assert summary["final_epoch_loss"] == pytest.approx(epoch_records[-1]["loss"])
    assert epoch_records[-1]["loss"] < 0.98 * epoch_records[0]["loss"], [r["loss"] for r in epoch_records]

    probes = sorted(p.name for p in (run / "probe").glob("*.json"))
    assert probes == ["epoch_000.json", "epoch_002.json", "epoch_003.json"]  # before, every 2, the last
    for name in probes:
        result = read_json(run / "probe" / name)
        assert result["epoch"] == int(name[6:9]) and result["solver"] == "torch"
        assert result["mean"]["labels"] == len(PROBED) and 0.0 <= result["mean"]["auroc"] <= 1.0
        assert (run / "probe" / name).with_suffix(".txt").is_file()
    assert 0 < summary["probe_seconds"] < summary["seconds"]  # the probes' wait, counted in the run's time
    assert summary["probe"] == {"epoch": epochs, "mean": read_json(run / "probe" / "epoch_003.json")["mean"]}

    model = rd.load(run)
    assert isinstance(model, DiffMAE if scheme == "diffusion" else MAE)
    assert model.config == model_config(**SCHEMES[scheme])
    trained = model.state_dict()
    fresh = from_config(model.config)
    resumed_from = load_checkpoint(run / CHECKPOINT, fresh, None)
    assert resumed_from["step"] == total
    _assert_same_tensors(trained, fresh.state_dict())  # the model is the last checkpoint's
    torch.manual_seed(0)
    initial = from_config(model.config).state_dict()  # the run's initialisation (seed 0)
    assert not torch.equal(initial["encoder.patch_embed.weight"], trained["encoder.patch_embed.weight"])
    _no_temporary_files(run)


# 2. exact resume after SIGKILL -------------------------------------------------------------------------------------

KILLED_PRETRAIN = textwrap.dedent(
    """
    import json, sys, time
    import raddiffusion.train.pretrain as module
    accumulate, calls = module.accumulate_gradients, [0]
    def slow_after_8_steps(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 8:
            time.sleep(0.3)
        return accumulate(*args, **kwargs)
    module.accumulate_gradients = slow_after_8_steps
    module.pretrain(sys.argv[1], sys.argv[2], model=json.loads(sys.argv[3]), train=json.loads(sys.argv[4]),
                    device="cpu", progress=False)
    """
)


def _kill_when_logged(process: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(r["kind"] == "step" and r["step"] >= step for r in read_metrics(run)):
            break
        time.sleep(0.002)
    finished = process.poll()
    os.killpg(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    assert finished is None, f"pretraining ended (code {finished}) before step {step}:\n{stderr.decode()}"
    assert process.returncode == -signal.SIGKILL


def test_sigkill_then_resume_equals_an_uninterrupted_run(store, tmp_path):
    settings = {"epochs": 3, "save_every": 4, "probe_every": 0}
    reference = tmp_path / "reference"
    _pretrain(store, reference, "diffusion", **settings)

    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PRETRAIN, str(store), str(run), json.dumps(SCHEMES["diffusion"]),
         json.dumps(BASE_TRAIN | settings | {"workers": 1})],
        start_new_session=True, stderr=subprocess.PIPE,
    )
    _kill_when_logged(process, run, 10)  # mid epoch 2 (steps 7-12), after the step-8 checkpoint
    assert not (run / "summary.json").exists()
    logged = [r["step"] for r in _steps(run)]
    assert logged[-1] in (10, 11) and logged == list(range(1, logged[-1] + 1))
    checkpoint_step = load_checkpoint(run / CHECKPOINT, from_config(model_config(**SCHEMES["diffusion"])), None)["step"]
    assert checkpoint_step == 8

    # save_every and workers may change on resume; neither changes the weights
    summary = _pretrain(store, run, "diffusion", resume=True, **settings | {"save_every": 5})
    assert summary["steps"] == 3 * STEPS_PER_EPOCH == read_json(reference / "summary.json")["steps"]
    _assert_same_tensors(load_file(run / "model.safetensors"), load_file(reference / "model.safetensors"))
    _assert_same_tensors(load_file(run / CHECKPOINT), load_file(reference / CHECKPOINT))

    steps, expected = _steps(run), _steps(reference)
    assert [r["step"] for r in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))  # 9, 10 cut and written again
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in expected], rel=1e-6)
    assert [r["lr"] for r in steps] == [r["lr"] for r in expected]
    assert [(r["step"], r["epoch"]) for r in _epochs(run)] == [(6, 1), (12, 2), (18, 3)]
    assert [r["loss"] for r in _epochs(run)] == pytest.approx([r["loss"] for r in _epochs(reference)], rel=1e-6)
    assert read_json(run / "config.json")["train"]["save_every"] == 5
    assert sorted(p.name for p in (run / "probe").glob("*.json")) == ["epoch_000.json", "epoch_003.json"]

    again = _pretrain(store, run, "diffusion", resume=True, **settings)  # a finished run: nothing more to do
    assert again["steps"] == summary["steps"] and len(_steps(run)) == len(steps)


# 3. two processes = one process with accumulation 2 -----------------------------------------------------------------

def test_the_logged_loss_is_the_mean_over_the_global_batch(store, tmp_path):
    run = tmp_path / "run"
    _pretrain(store, run, accumulation=2)
    torch.manual_seed(0)
    net = from_config(model_config(**TINY))  # the run's initial weights: step 1's loss is computed with them
    dataset = rd.StudyDataset(rd.open_store(store), split="train")
    plan = EpochPlan(dataset.view_counts(), BATCH, 2, 0, 1, seed=0, epoch=0)
    losses, images = [], []
    with torch.no_grad():
        for mb in plan.micro_batches(0):
            batch = rd.collate_studies([dataset[int(i)] for i in mb.studies])
            generator = micro_batch_generator(0, 0, mb.index, torch.device("cpu"))
            losses.append(net(batch["images"], batch["lengths"], generator).item())
            images.append(len(batch["images"]))
    assert len(set(images)) == 2, "the two micro-batches should hold different numbers of images"
    expected = sum(loss * n for loss, n in zip(losses, images)) / sum(images)
    assert _steps(run)[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert _steps(run)[0]["loss"] != pytest.approx(sum(losses) / 2, rel=1e-5)


DDP_PRETRAIN = textwrap.dedent(
    """
    import json, os, sys, time
    from raddiffusion.train import distributed
    from raddiffusion.train.pretrain import pretrain
    start = distributed.start
    def late_rank_1(device):
        process = start(device)
        if process.rank == 1:
            time.sleep(0.5)  # rank 0 must not write into the run before every rank has looked at it
        return process
    distributed.start = late_rank_1
    pretrain(sys.argv[1], sys.argv[2], model=json.loads(sys.argv[3]), train=json.loads(sys.argv[4]), device="cpu",
             progress=False)
    distributed.stop()
    """
)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_processes_train_like_one_with_accumulation(store, tmp_path):
    settings = BASE_TRAIN | {"epochs": 2, "probe_every": 0}
    single = tmp_path / "single"
    _pretrain(store, single, "vanilla", **settings | {"accumulation": 2})

    script = tmp_path / "ddp_pretrain.py"
    script.write_text(DDP_PRETRAIN)
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(store), str(run), json.dumps(SCHEMES["vanilla"]), json.dumps(settings | {"accumulation": 1})],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"

    lines = (run / "metrics.jsonl").read_text().splitlines()
    total = 2 * STEPS_PER_EPOCH
    assert len(lines) == total + 2  # one line per step and epoch: only rank 0 writes
    steps, expected = _steps(run), _steps(single)
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in expected], rel=1e-4)
    assert read_json(run / "config.json")["train"]["accumulation"] == 1
    assert sorted(p.name for p in (run / "probe").glob("*.json")) == ["epoch_000.json", "epoch_002.json"]
    first, first_single = read_json(run / "probe" / "epoch_000.json"), read_json(single / "probe" / "epoch_000.json")
    assert first["labels"] == first_single["labels"] and first["mean"] == first_single["mean"]  # each rank embedded a share
    _assert_same_tensors(load_file(run / "model.safetensors"), load_file(single / "model.safetensors"), atol=1e-4)
    # Adam's moments scale with the gradient (its steps hardly do): the gradients were those of the global batch
    ddp_state, single_state = load_file(run / CHECKPOINT), load_file(single / CHECKPOINT)
    assert ddp_state.keys() == single_state.keys()
    for name in ddp_state:
        scale = single_state[name].abs().max().item()
        assert (ddp_state[name] - single_state[name]).abs().max().item() <= 1e-3 * scale, name
    _no_temporary_files(run)


# 4. errors ----------------------------------------------------------------------------------------------------------

def test_an_existing_run_is_not_overwritten_nor_resumed_with_other_settings(store, tmp_path):
    run = tmp_path / "run"
    _pretrain(store, run, batch_size=TRAIN_STUDIES)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunError, match="already holds a run"):
        _pretrain(store, run, batch_size=TRAIN_STUDIES)
    with pytest.raises(RunError, match=r"mask_ratio 0\.5 -> 0\.75"):
        _pretrain(store, run, model={"mask_ratio": 0.75}, resume=True, batch_size=TRAIN_STUDIES)
    with pytest.raises(RunError, match=r"lr 0\.001 -> 0\.01"):
        _pretrain(store, run, resume=True, batch_size=TRAIN_STUDIES, lr=0.01)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_damaged_and_pickled_checkpoints_are_refused_in_one_line(store, tmp_path):
    run = tmp_path / "run"
    _pretrain(store, run, batch_size=TRAIN_STUDIES)
    model = from_config(model_config(**TINY))
    data = (run / CHECKPOINT).read_bytes()
    pickled = tmp_path / "pickled.safetensors"
    torch.save(model.state_dict(), pickled)
    legacy = tmp_path / "legacy.safetensors"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    cases = [pickled, legacy]
    for name, length in (("header", 100), ("tensors", len(data) // 2), ("last-byte", len(data) - 1)):
        path = tmp_path / f"cut-{name}.safetensors"
        path.write_bytes(data[:length])
        cases.append(path)
    for path in cases:
        optimizer = build_optimizer(model, 1e-3, 0.05)
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path, model, optimizer)
        message = str(error.value)
        assert str(path) in message and "\n" not in message, message
    assert load_checkpoint(run / CHECKPOINT, model, build_optimizer(model, 1e-3, 0.05))["step"] == 1


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(store, tmp_path, monkeypatch):
    loss, calls = MAE.loss, [0]

    def nan_at_step_5(self, *args, **kwargs):
        calls[0] += 1
        value = loss(self, *args, **kwargs)
        return value * float("nan") if calls[0] == 5 else value

    monkeypatch.setattr(MAE, "loss", nan_at_step_5)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="at step 5") as error:
        _pretrain(store, run, save_every=2)
    assert str(run / CHECKPOINT) in str(error.value) and "\n" not in str(error.value)
    assert [r["step"] for r in _steps(run)] == [1, 2, 3, 4]
    assert not (run / "summary.json").exists()
    model = from_config(model_config(**TINY))
    assert load_checkpoint(run / CHECKPOINT, model, None)["step"] == 4
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())

    monkeypatch.undo()
    summary = _pretrain(store, run, resume=True, save_every=2)  # the checkpoint is good to go on from
    assert summary["steps"] == STEPS_PER_EPOCH and [r["step"] for r in _steps(run)] == list(range(1, 7))


def test_batch_larger_than_the_train_split_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match=f"larger than the {TRAIN_STUDIES} train studies"):
        _pretrain(store, tmp_path / "run", batch_size=TRAIN_STUDIES + 1)
    assert not (tmp_path / "run" / "config.json").exists()  # the same --run can be used again


def test_store_of_another_image_size_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match="holds 64² images but the model takes 32²"):
        _pretrain(store, tmp_path / "run", model={"image_size": 32})
    assert not (tmp_path / "run" / "config.json").exists()


# 5. the command -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", [["--epochs", "zero"], ["--precision", "fp16"], ["--scheme", "gan"]])
def test_pretrain_command_refuses_bad_flags_with_exit_2(store, tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", str(store), "--run", str(tmp_path / "run"), *flag])
    assert exit_info.value.code == 2
    assert flag[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pretrain_command_with_a_missing_store_is_one_line_exit_2(tmp_path, capsys):
    code = main(["pretrain", str(tmp_path / "nowhere"), "--run", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "nowhere" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "config.json").exists()
