"""Label metrics, the linear probe and study vectors of a frozen model."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import raddiffusion as rd
from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.preprocess import preprocess
from raddiffusion.fileio import read_json
from raddiffusion.results.metrics import format_table, label_metrics
from raddiffusion.train.probe import (PROBE_SOLVERS, ProbeOptions, embed_split, linear_probe, probe, probe_splits,
                                     study_vectors, write_probe)

SIZE = 64
TINY = {"image_size": SIZE, "patch_size": 16, "width": 32, "depth": 1, "heads": 2, "mlp_hidden": 64,
        "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, "decoder_mlp_hidden": 32}
COL = {name: k for k, name in enumerate(LABELS)}


@pytest.fixture
def store(small_tree, tmp_path):
    preprocess(small_tree.root, tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    return rd.open_store(tmp_path / "store")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return rd.create("xs", "vanilla", **TINY)


def _alternating(studies: int) -> np.ndarray:
    """Targets ``[studies, 14]``: every label 0, 1, 0, 1, ..."""
    return np.tile((np.arange(studies) % 2)[:, None], (1, len(LABELS))).astype(np.float32)


def test_perfect_and_reversed_predictions():
    targets = _alternating(8)
    perfect = label_metrics(0.1 + 0.8 * targets, targets, labels=LABELS)
    reversed_ = label_metrics(0.9 - 0.8 * targets, targets, labels=LABELS)
    assert perfect["studies"] == 8 and perfect["mean"]["labels"] == len(LABELS)
    for name in LABELS:
        assert perfect["labels"][name]["auroc"] == 1.0 and perfect["labels"][name]["auprc"] == 1.0
        assert perfect["labels"][name]["f1"] == 1.0
        assert reversed_["labels"][name]["auroc"] == 0.0 and reversed_["labels"][name]["f1"] == 0.0
        assert (perfect["labels"][name]["positives"], perfect["labels"][name]["negatives"]) == (4, 4)
    assert perfect["mean"]["auroc"] == 1.0 and reversed_["mean"]["auroc"] == 0.0


def test_one_class_labels_are_absent_and_left_out_of_the_mean():
    targets = _alternating(6)
    targets[:, COL["Edema"]] = 0.0
    targets[:, COL["Fracture"]] = 1.0
    scores = 0.1 + 0.8 * targets
    scores[:, COL["Atelectasis"]] = 0.9 - 0.8 * targets[:, COL["Atelectasis"]]  # reversed: AUROC 0
    mask = np.ones_like(targets)
    mask[:, COL["Pneumonia"]] = 0.0
    result = label_metrics(scores, targets, mask, labels=LABELS)
    assert result["labels"]["Edema"] == {"absent": "no positive studies", "positives": 0, "negatives": 6}
    assert result["labels"]["Fracture"] == {"absent": "no negative studies", "positives": 6, "negatives": 0}
    assert result["labels"]["Pneumonia"] == {"absent": "no studies", "positives": 0, "negatives": 0}
    scored = len(LABELS) - 3
    assert result["mean"]["labels"] == scored
    assert result["mean"]["auroc"] == pytest.approx((scored - 1) / scored)  # one 0, the rest 1
    nothing = label_metrics(scores, targets, np.zeros_like(targets), labels=LABELS)
    assert nothing["mean"] == {"auroc": None, "auprc": None, "f1": None, "labels": 0}


def test_masked_rows_change_nothing():
    rng = np.random.default_rng(0)
    targets = _alternating(10)
    scores = rng.random(targets.shape)
    mask = np.ones_like(targets)
    mask[[0, 3], :] = 0.0
    before = label_metrics(scores, targets, mask, labels=LABELS)
    changed = scores.copy()
    changed[[0, 3], :] = 1.0 - changed[[0, 3], :]
    assert label_metrics(changed, targets, mask, labels=LABELS) == before
    assert label_metrics(changed, targets, labels=LABELS) != label_metrics(scores, targets, labels=LABELS)  # rows matter unmasked
    assert before["labels"]["Edema"]["positives"] + before["labels"]["Edema"]["negatives"] == 8


def test_metrics_are_plain_json_and_tabulate():
    targets = _alternating(6)
    targets[:, COL["Edema"]] = 0.0
    scores = np.linspace(0, 1, 6)[:, None].repeat(len(LABELS), 1).astype(np.float32)
    result = label_metrics(scores, targets, labels=LABELS)
    assert json.loads(json.dumps(result)) == result
    cardiomegaly = result["labels"]["Cardiomegaly"]
    assert all(type(v) in (float, int) for k, v in cardiomegaly.items() if not k.endswith("_ci95"))
    low, high = cardiomegaly["auroc_ci95"]
    assert type(low) is float and low <= cardiomegaly["auroc"] <= high
    table = format_table(result, "demo")
    lines = table.splitlines()
    assert lines[0].startswith("demo")
    assert any(line.startswith("Edema") and "no positive studies" in line for line in lines)
    cardio = next(line for line in lines if line.startswith("Cardiomegaly"))
    assert f"{result['labels']['Cardiomegaly']['auroc']:.3f}" in cardio and "3/6" in cardio
    assert f"[{low:.3f}, {high:.3f}]" in cardio
    assert lines[-2].startswith("mean") and "bootstrap resamples of patients" in lines[-1]
    with pytest.raises(ValueError, match="shape"):
        label_metrics(np.zeros((4, 3)), np.zeros((4, 3)), labels=LABELS)


def _synthetic(rng, studies, features=8):
    """Features and targets: labels 0-2 follow features linearly, the rest are coin flips."""
    x = rng.normal(size=(studies, features)).astype(np.float32)
    y = (rng.random((studies, len(LABELS))) < 0.5).astype(np.float32)
    y[:, 0] = x[:, 0] > 0
    y[:, 1] = x[:, 1] + x[:, 2] > 0.5
    y[:, 2] = x[:, 3] < 0
    return x * 10 + 3, y  # far from standardised


@pytest.mark.parametrize("solver", PROBE_SOLVERS)
def test_linear_probe_learns_linear_labels_and_respects_masks(solver):
    rng = np.random.default_rng(0)
    train_x, train_y = _synthetic(rng, 300)
    eval_x, eval_y = _synthetic(rng, 200)
    train_mask = np.ones_like(train_y)
    wrong = rng.random(len(train_y)) < 0.6  # most rows have label 2 reversed, but are masked out
    train_y[wrong, 2] = 1.0 - train_y[wrong, 2]
    train_mask[wrong, 2] = 0.0
    last = LABELS[-1]
    train_y[:, -1] = 0.0  # constant in train, both classes in eval
    eval_mask = np.ones_like(eval_y)
    eval_mask[:50, 0] = 0.0
    result = linear_probe(train_x, train_y, train_mask, eval_x, eval_y, eval_mask, LABELS, seed=0, solver=solver)
    assert result["studies"] == 200
    assert result["labels"][LABELS[0]]["positives"] + result["labels"][LABELS[0]]["negatives"] == 150
    for name in LABELS[:3]:
        assert result["labels"][name]["auroc"] > 0.97, name
    assert 0.3 < result["labels"][LABELS[5]]["auroc"] < 0.7  # noise stays noise
    assert result["labels"][last]["absent"] == "only one class in train"
    assert result["labels"][last]["positives"] > 0 and result["labels"][last]["negatives"] > 0
    assert result["mean"]["labels"] == len(LABELS) - 1
    again = linear_probe(train_x, train_y, train_mask, eval_x, eval_y, eval_mask, LABELS, seed=0, solver=solver)
    assert again == result


def test_study_vectors_are_each_study_embedded_alone(store, model):
    ds = rd.StudyDataset(store, split=None)
    model.train()
    vectors = study_vectors(model, ds, batch_size=3, progress=False)
    assert model.training
    assert vectors.dtype == np.float32 and vectors.shape == (len(ds), model.config.width)
    model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            batch = rd.collate_studies([ds[i]])
            alone = model.embed(batch["images"], batch["lengths"])[0].numpy()
            np.testing.assert_allclose(vectors[i], alone, rtol=1e-5, atol=1e-5)
    assert not model.training  # restored to eval, as it was
    assert not np.allclose(vectors[0], vectors[1])


def test_study_vectors_unwraps_a_wrapped_model(store, model):
    ds = rd.StudyDataset(store, split="validate")
    wrapper = torch.nn.Module()
    wrapper.module = model
    np.testing.assert_array_equal(study_vectors(wrapper, ds, progress=False), study_vectors(model, ds, progress=False))


def test_probe_end_to_end_and_write(store, model, tmp_path):
    result = probe(model, store, batch_size=2, progress=False)
    assert {"train_split", "eval_split", "train_studies", "eval_studies", "studies", "labels", "mean"} <= set(result)
    assert (result["train_split"], result["eval_split"]) == ("train", "validate")
    assert (result["train_studies"], result["eval_studies"], result["studies"]) == (4 + 1, 2, 2)
    assert set(result["labels"]) == set(LABELS)
    assert "auroc" in result["labels"]["Edema"]  # train: 50000001 uncertain -> 1; validate: 50000008 positive
    # Lung Opacity has both classes in validate but none positive in train
    assert result["labels"]["Lung Opacity"]["absent"] == "only one class in train"
    path = tmp_path / "out" / "probe.json"
    write_probe(result, path)
    assert read_json(path) == result
    table = path.with_suffix(".txt").read_text()
    assert "Edema" in table and "only one class in train" in table and "validate" in table
    assert not list(path.parent.glob(".*.tmp-*"))


def test_probe_needs_labelled_studies(store, model):
    validate = store.index.loc[store.index.split == "validate", "study_id"].unique()
    unlabelled = dataclasses.replace(store, labels=store.labels.drop(index=validate))
    with pytest.raises(ValueError, match="'validate' has no labelled studies"):
        probe(model, unlabelled, progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        probe(model, store, eval_split="validation", progress=False)


# Under torchrun: every rank embeds its share of the store's studies; rank 0 saves the vectors and the probe.
DDP_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    import raddiffusion as rd
    from raddiffusion.train import distributed
    from raddiffusion.train.probe import ProbeOptions, embed_split, probe_splits
    process = distributed.start("cpu")
    torch.manual_seed(0)
    model = rd.create("xs", "vanilla", **json.loads(sys.argv[2]))
    gather, local = distributed.gather_rows, []
    def recorded(rows, counts, process):
        local.append(len(rows))
        return gather(rows, counts, process)
    distributed.gather_rows = recorded
    store = rd.open_store(sys.argv[1])
    train, validate = (embed_split(model, store, split, batch_size=2, progress=False, process=process)
                       for split in ("train", "validate"))
    shares = [None] * process.ranks
    torch.distributed.all_gather_object(shares, local)
    if process.is_main:
        metrics, _ = probe_splits(train, validate, ProbeOptions())
        np.save(sys.argv[3] + "/train.npy", train.vectors)
        json.dump({"metrics": metrics, "shares": shares}, open(sys.argv[3] + "/probe.json", "w"))
    distributed.stop()
    """
)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_processes_embed_a_share_each_and_probe_like_one(store, model, tmp_path):
    script = tmp_path / "ddp_probe.py"
    script.write_text(DDP_PROBE)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(store.root), json.dumps(TINY), str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"
    ddp = json.loads((tmp_path / "probe.json").read_text())
    train, validate = (embed_split(model, store, split, batch_size=2, progress=False) for split in ("train", "validate"))
    metrics, _ = probe_splits(train, validate, ProbeOptions())
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), train.vectors)  # the same batches, the same vectors
    assert ddp["metrics"] == json.loads(json.dumps(metrics))
    assert ddp["shares"] == [[3, 2], [2, 0]]  # train: 5 studies, batches 0 and 2 on rank 0, 1 on rank 1; validate: 2
