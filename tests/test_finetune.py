"""Fine-tuning: pos_weight and the masked loss, the run's files, best weights and early stopping, exact resume,
the ``run`` workflow with the original spellings, ``probe`` and ``finetune --from`` on the command line."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import raddiffusion as rd
import raddiffusion.train.finetune as finetune_module
from raddiffusion.cli import main
from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.preprocess import preprocess
from raddiffusion.fileio import read_json
from raddiffusion.models import StudyClassifier
from raddiffusion.train.finetune import FinetuneSettings, evaluate_test_split, finetune, masked_bce, pos_weight
from raddiffusion.train.pretrain import pretrain
from raddiffusion.results.predictions import read_predictions
from raddiffusion.results.runfiles import read_metrics

from conftest import TreeImage, labels_row, write_tree

SIZE = 64
TINY = {"preset": "xs", "scheme": "vanilla", "image_size": SIZE, "patch_size": 16, "width": 32, "depth": 2,
        "heads": 2, "mlp_hidden": 64, "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_hidden": 32}
TRAIN_STUDIES, VALIDATE_STUDIES, TEST_STUDIES = 24, 8, 4  # labelled; one more train study has no CheXpert row
BATCH = 4
STEPS_PER_EPOCH = TRAIN_STUDIES // BATCH
ORIGINAL_RECIPE = {"head_init": "random", "head_lr_scale": 1.0, "layer_decay": 1.0, "drop_path": 0.0, "augment": False,
                   "select_on": "loss"}
BASE_TRAIN = {"batch_size": BATCH, "workers": 0, "save_every": 100, "lr": 1e-3}
FINETUNED = {"epochs": 2, "lr": 3e-3}  # the run of the `finetuned` fixture
UNCERTAIN_EVERY = 5  # Edema is uncertain (-1) in studies s % 5 == 0


def raw_labels(s: int) -> dict[str, float]:
    """Cardiomegaly = bit 0, Edema = bit 1 (uncertain when s % 5 == 0), Pleural Effusion = bit 2; the rest blank."""
    return {"Cardiomegaly": float(s & 1), "Edema": -1.0 if s % UNCERTAIN_EVERY == 0 else float((s >> 1) & 1),
            "Pleural_Effusion": float((s >> 2) & 1)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_store(root: Path, validate: bool = True, test: bool = True) -> Path:
    """24 labelled train studies (+1 unlabelled), 8 validate (or none), 4 test (or none); 1-3 views of distinct greys."""
    images, labels = [], {}
    total = TRAIN_STUDIES + VALIDATE_STUDIES + TEST_STUDIES
    for s in range(total + 1):
        split = ("train" if s < TRAIN_STUDIES or s == total
                 else "validate" if s < TRAIN_STUDIES + VALIDATE_STUDIES else "test")
        if (split == "validate" and not validate) or (split == "test" and not test):
            continue
        prefix = {"train": 10 + s % 8, "validate": 18, "test": 19}[split]
        subject, study = prefix * 1_000_000 + s, 50_000_000 + s
        for k, view in enumerate(["PA", "LATERAL", "AP"][: 1 + s % 3]):
            images.append(TreeImage(subject, study, f"{study:08d}-{k:02d}", view, (s * 37 + k * 90) % 256, split))
        if s < total:
            labels[study] = labels_row(**raw_labels(s))
    write_tree(root / "mimic", images, labels)
    preprocess(root / "mimic", root / "store", image_size=SIZE, workers=1, progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _write_store(tmp_path_factory.mktemp("finetune"))


@pytest.fixture(scope="module")
def pretrained(store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrained") / "run"
    pretrain(store, run, model=TINY, train=BASE_TRAIN | {"epochs": 1, "probe_every": 0}, device="cpu", progress=False)
    return run


def _finetune(store: Path, run: Path, pretrained: Path | None, resume: bool = False, **train) -> dict:
    return finetune(store, run, pretrained=pretrained, train=BASE_TRAIN | ORIGINAL_RECIPE | train, resume=resume,
                    device="cpu", progress=False)


def _epochs(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == "epoch"]


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def _expected_pos_weight(policy: str) -> np.ndarray:
    """1/sqrt(positives / counted) per label over the labelled train studies, by hand (a never-positive label: 1)."""
    positives, counted = np.zeros(len(LABELS)), np.zeros(len(LABELS))
    for s in range(TRAIN_STUDIES):
        for k, name in enumerate(LABELS):
            value = raw_labels(s).get(name.replace(" ", "_"), 0.0)
            if value == -1.0 and policy == "ignore":
                continue
            counted[k] += 1
            positives[k] += value == 1.0 or (value == -1.0 and policy == "ones")
    return 1.0 / np.sqrt(np.maximum(positives, 1.0) / counted)


# 1. pos_weight and the masked loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_pos_weight_is_one_over_sqrt_prevalence_of_the_train_split(store, policy):
    train = rd.StudyDataset(rd.open_store(store), split="train", label_policy=policy, labelled_only=True)
    assert len(train) == TRAIN_STUDIES
    weight = pos_weight(train)
    expected = _expected_pos_weight(policy)
    assert weight.dtype == torch.float32 and weight.shape == (len(LABELS),)
    np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-6)
    cardiomegaly = LABELS.index("Cardiomegaly")
    assert weight[cardiomegaly].item() == pytest.approx(math.sqrt(2.0))  # half the studies are positive
    fracture = LABELS.index("Fracture")  # never positive: counts one positive of 24
    assert weight[fracture].item() == pytest.approx(math.sqrt(TRAIN_STUDIES))
    edema = LABELS.index("Edema")
    uncertain = len(range(0, TRAIN_STUDIES, UNCERTAIN_EVERY))
    if policy == "ignore":  # uncertain studies leave the denominator
        positives = sum(1 for s in range(TRAIN_STUDIES) if s % UNCERTAIN_EVERY and (s >> 1) & 1)
        assert weight[edema].item() == pytest.approx(1 / math.sqrt(positives / (TRAIN_STUDIES - uncertain)))


def test_pos_weight_is_finite_when_a_label_is_never_positive_or_never_counted():
    labels = np.zeros((4, len(LABELS)), np.float32)
    labels[:2, 0] = 1.0
    mask = np.ones_like(labels)
    mask[:, 1] = 0.0  # label 1 masked everywhere
    weight = pos_weight(SimpleNamespace(labels=labels, label_mask=mask))
    assert torch.isfinite(weight).all()
    assert weight[0].item() == pytest.approx(math.sqrt(2.0))
    assert weight[1].item() == pytest.approx(1.0)
    assert weight[2].item() == pytest.approx(2.0)  # 0 of 4 positive counts as 1 of 4
    masked_positives = labels.copy()
    masked_positives[:, 1] = 1.0  # positives under a zero mask do not count
    assert torch.equal(pos_weight(SimpleNamespace(labels=masked_positives, label_mask=mask)), weight)


def test_masked_bce_ignores_masked_entries_and_is_weighted_bce_on_the_rest():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, len(LABELS), generator=generator) * 3
    labels = (torch.rand(6, len(LABELS), generator=generator) < 0.4).float()
    mask = (torch.rand(6, len(LABELS), generator=generator) < 0.7).float()
    weight = 0.5 + torch.rand(len(LABELS), generator=generator) * 3
    loss = masked_bce(logits, labels, mask, weight)

    elementwise = torch.nn.BCEWithLogitsLoss(pos_weight=weight, reduction="none")(logits, labels)
    expected = elementwise[mask.bool()].mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))

    changed = logits.clone()
    changed[~mask.bool()] = torch.randn(int((mask == 0).sum()), generator=generator) * 100  # masked logits only
    flipped = labels.clone()
    flipped[~mask.bool()] = 1.0 - flipped[~mask.bool()]
    assert torch.equal(masked_bce(changed, flipped, mask, weight), loss)
    moved = logits.clone()
    moved[mask.bool().nonzero()[0].tolist()] += 1.0  # an unmasked logit does change it
    assert masked_bce(moved, labels, mask, weight) != loss
    assert masked_bce(logits, labels, torch.zeros_like(mask), weight).item() == 0.0  # nothing counted: 0, not NaN


# 4. the ignore policy -----------------------------------------------------------------------------------------------

def test_ignore_policy_leaves_uncertain_labels_out_of_the_loss(store):
    store_ = rd.open_store(store)
    edema = LABELS.index("Edema")
    ignore = rd.StudyDataset(store_, split="train", label_policy="ignore", labelled_only=True)
    ones = rd.StudyDataset(store_, split="train", label_policy="ones", labelled_only=True)
    # study 0: every label negative or blank except an uncertain Edema, its only "positive"
    i = list(ignore.study_ids).index(50_000_000)
    assert ignore.label_mask[i, edema] == 0.0 and ignore.label_mask[i].sum() == len(LABELS) - 1
    assert ignore.labels[i].sum() == 0.0
    assert ones.labels[i, edema] == 1.0 and ones.label_mask[i].sum() == len(LABELS)
    uncertain_studies = [k for k, sid in enumerate(ignore.study_ids) if (sid - 50_000_000) % UNCERTAIN_EVERY == 0]
    assert (ignore.label_mask[uncertain_studies, edema] == 0).all()
    assert ignore.label_mask[:, edema].sum() == TRAIN_STUDIES - len(uncertain_studies)

    weight = pos_weight(ignore)
    batch = rd.collate_studies([ignore[i]])
    logits = torch.zeros(1, len(LABELS))
    base = masked_bce(logits, batch["labels"], batch["label_mask"], weight)
    for value in (-20.0, 20.0):
        pushed = logits.clone()
        pushed[0, edema] = value
        assert masked_bce(pushed, batch["labels"], batch["label_mask"], weight) == base
    ones_batch = rd.collate_studies([ones[i]])
    pushed = logits.clone()
    pushed[0, edema] = -20.0
    assert masked_bce(pushed, ones_batch["labels"], ones_batch["label_mask"], weight) > 1.0  # counted under ones


# 2. a fine-tuning run -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finetuned(store, pretrained, tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """A 2-epoch run from the pretrained encoder, with the weights seen at each epoch's validation."""
    run = tmp_path_factory.mktemp("finetuned") / "run"
    seen: list[dict] = []
    real = finetune_module.evaluate_validation

    def spy(model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune_module, "evaluate_validation", spy)
        summary = _finetune(store, run, pretrained, **FINETUNED)
    return run, summary, seen


def test_finetuning_writes_the_run_with_the_best_weights_and_test_metrics(store, pretrained, finetuned):
    run, summary, seen = finetuned
    config = read_json(run / "config.json")
    assert config["command"] == "finetune" and config["pretrained"] == str(pretrained)
    encoder = {k: v for k, v in config["model"].items() if k != "label_names"}
    assert encoder == {k: v for k, v in rd.load(pretrained).config.to_dict().items() if k != "label_names"}
    assert config["model"]["label_names"] == list(LABELS) and config["dataset"] == "mimic"
    assert rd.load(run).label_names == LABELS  # the fine-tuned model knows its labels
    assert config["data"]["train_studies"] == TRAIN_STUDIES and config["data"]["validate_studies"] == VALIDATE_STUDIES
    assert config["data"]["steps_per_epoch"] == STEPS_PER_EPOCH
    np.testing.assert_allclose(config["data"]["pos_weight"], _expected_pos_weight("ones"), rtol=1e-6)

    assert read_json(run / "summary.json") == summary
    epochs = _epochs(run)
    assert [(r["epoch"], r["step"]) for r in epochs] == [(e, e * STEPS_PER_EPOCH) for e in range(1, len(epochs) + 1)]
    assert summary["epochs_run"] == len(epochs) == len(seen) and 1 <= summary["best_epoch"] <= summary["epochs_run"]
    val = [r["val_loss"] for r in epochs]
    assert all(math.isfinite(v) for v in val)
    assert summary["best_epoch"] == 1 + int(np.argmin(val)) and summary["best_val_loss"] == min(val)
    assert [r["best"] for r in epochs] == [v < min(val[:k], default=math.inf) for k, v in enumerate(val)]
    assert summary["steps"] == summary["epochs_run"] * STEPS_PER_EPOCH

    model = rd.load(run)
    assert isinstance(model, StudyClassifier) and model.config == replace(rd.load(pretrained).config, label_names=LABELS)
    _assert_same_tensors(load_file(run / "model.safetensors"), seen[summary["best_epoch"] - 1])
    assert not torch.equal(seen[0]["head.weight"], seen[-1]["head.weight"])  # it trained

    metrics = read_json(run / "test_metrics.json")
    assert list(metrics["labels"]) == list(LABELS) and len(metrics["labels"]) == 14
    assert metrics["studies"] == TEST_STUDIES and metrics["split"] == "test"
    assert {"auroc", "auprc", "f1", "labels"} <= set(metrics["mean"])
    assert summary["test"] == {"studies": TEST_STUDIES, "mean": metrics["mean"]}
    table = (run / "test_metrics.txt").read_text()
    assert all(name in table for name in LABELS)
    # the test metrics are those of the best weights
    again, predictions = evaluate_test_split(model, rd.open_store(store), FinetuneSettings(), torch.device("cpu"), False)
    assert again["mean"]["auroc"] == pytest.approx(metrics["mean"]["auroc"])
    assert again["mean"]["auroc_ci95"] == pytest.approx(metrics["mean"]["auroc_ci95"])
    written = read_predictions(run / "test_predictions.csv")
    assert list(written.study_ids) == list(predictions.study_ids) and written.labels == tuple(LABELS)
    np.testing.assert_allclose(written.probabilities, predictions.probabilities, atol=1e-6)
    np.testing.assert_array_equal(written.mask, predictions.mask)
    np.testing.assert_array_equal(written.targets[written.mask], predictions.targets[predictions.mask])
    for name in LABELS:
        assert again["labels"][name].get("auroc") == pytest.approx(metrics["labels"][name].get("auroc")), name
    assert (run / "figures" / "attention.png").stat().st_size > 0  # the store has a validation study of 2+ views


def test_the_classifier_starts_from_the_pretrained_encoder(pretrained):
    source = rd.load(pretrained)
    classifier = StudyClassifier.from_pretrained(source)
    _assert_same_tensors(classifier.encoder.state_dict(), source.encoder.state_dict())
    assert classifier.head.out_features == 14
    torch.manual_seed(0)
    random = StudyClassifier(source.config)
    assert not torch.equal(random.encoder.patch_embed.weight, source.encoder.patch_embed.weight)


def test_best_weights_are_kept_when_later_epochs_are_worse(store, pretrained, tmp_path, monkeypatch):
    scripted, seen = iter([1.0, 0.5, 0.7, 0.4]), []

    def scripted_loss(model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"loss": next(scripted), "auroc": None}

    real_test, tested = finetune_module.evaluate_test_split, []

    def spy_test(model, *args, **kwargs):
        tested.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_test(model, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "evaluate_validation", scripted_loss)
    monkeypatch.setattr(finetune_module, "evaluate_test_split", spy_test)
    run = tmp_path / "run"
    summary = _finetune(store, run, pretrained, epochs=4, patience=1)
    assert (summary["epochs_run"], summary["best_epoch"], summary["best_val_loss"]) == (3, 2, 0.5)
    assert [r["best"] for r in _epochs(run)] == [True, True, False]
    assert [r["val_loss"] for r in _epochs(run)] == [1.0, 0.5, 0.7]
    _assert_same_tensors(load_file(run / "model.safetensors"), seen[1])  # not the last epoch's weights
    assert not torch.equal(seen[1]["head.weight"], seen[2]["head.weight"])
    # the test split is evaluated with the best weights, not with the last ones
    assert len(tested) == 1
    _assert_same_tensors(tested[0], seen[1])
    best = StudyClassifier(rd.load(run).config)
    best.load_state_dict(seen[1])
    lacking = read_json(run / "config.json")["data"]["labels_absent"]  # no positive train study: reported absent
    expected, _ = evaluate_test_split(best.eval(), rd.open_store(store), FinetuneSettings(), torch.device("cpu"), False,
                                      lacking)
    assert json.loads(json.dumps(expected)) == read_json(run / "test_metrics.json")


@pytest.mark.parametrize("split", ["validate", "test"])
def test_a_store_without_validation_or_test_studies_is_refused_before_the_run_is_written(tmp_path, split):
    store = _write_store(tmp_path, validate=split != "validate", test=split != "test")
    assert len(rd.StudyDataset(rd.open_store(store), split=split)) == 0
    with pytest.raises(ValueError, match=f"no labelled {split} studies"):
        finetune(store, tmp_path / "run", model=TINY, train=BASE_TRAIN | {"epochs": 2}, device="cpu", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()  # the same --run can be used again


# 3. early stopping on the real validation loss ----------------------------------------------------------------------

def test_early_stopping_when_the_validation_loss_stops_improving(store, pretrained, tmp_path):
    run = tmp_path / "run"
    patience = 2
    summary = _finetune(store, run, pretrained, epochs=6, lr=0.0, patience=patience, label_policy="ignore")
    assert summary["epochs_run"] < 6
    assert summary["epochs_run"] - summary["best_epoch"] == patience
    assert (summary["best_epoch"], summary["epochs_run"]) == (1, 3)  # lr 0: the loss never gets lower
    val = [r["val_loss"] for r in _epochs(run)]
    assert len(val) == 3 and val[0] == val[1] == val[2]
    np.testing.assert_allclose(read_json(run / "config.json")["data"]["pos_weight"], _expected_pos_weight("ignore"),
                               rtol=1e-6)
    # with lr 0 the saved model is exactly the initial one: the pretrained encoder and the seed-0 head
    torch.manual_seed(0)
    initial = StudyClassifier.from_pretrained(rd.load(pretrained))  # the same draws as the run's initialisation
    _assert_same_tensors(load_file(run / "model.safetensors"), initial.state_dict())


# 5. resume ----------------------------------------------------------------------------------------------------------

RESUMED = {"epochs": 3, "patience": 1, "save_every": 2, "lr": 3e-3}


def _rising_validation_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The negated real validation loss: it falls as the model learns, so the negation rises after epoch 1 and
    a resumed run must know its best loss so far (and its epochs without improvement) to decide as the reference."""
    real = finetune_module.evaluate_validation

    def negated(*args, **kwargs) -> dict:
        validation = real(*args, **kwargs)
        return {**validation, "loss": -validation["loss"]}

    monkeypatch.setattr(finetune_module, "evaluate_validation", negated)


@pytest.fixture(scope="module")
def resume_reference(store, pretrained, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("resume_reference") / "run"
    with pytest.MonkeyPatch.context() as patch:
        _rising_validation_loss(patch)
        summary = _finetune(store, run, pretrained, **RESUMED)
    return run, summary


def test_the_resume_reference_stops_early_and_keeps_epoch_1(resume_reference):
    run, summary = resume_reference
    assert (summary["epochs_run"], summary["best_epoch"], summary["steps"]) == (2, 1, 2 * STEPS_PER_EPOCH)
    assert [r["best"] for r in _epochs(run)] == [True, False]


@pytest.mark.parametrize("stop_at_step", [0, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH],
                         ids=["before-any-checkpoint", "end-of-epoch-1", "mid-epoch-2", "end-of-epoch-2"])
def test_interrupted_then_resumed_equals_an_uninterrupted_run(store, pretrained, resume_reference, tmp_path,
                                                              monkeypatch, stop_at_step):
    reference, expected = resume_reference
    _rising_validation_loss(monkeypatch)
    real, saved = finetune_module.save_checkpoint, [0]

    def save_then_interrupt(path, net, optimizer, state):
        real(path, net, optimizer, state)
        saved.append(state["step"])
        if state["step"] == stop_at_step:
            raise KeyboardInterrupt

    def interrupt(*args, **kwargs):  # in the first step: the run directory holds config.json and no checkpoint
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(finetune_module, "save_checkpoint", save_then_interrupt)
        if stop_at_step == 0:
            patch.setattr(finetune_module, "accumulate_gradients", interrupt)
        run = tmp_path / "run"
        with pytest.raises(KeyboardInterrupt):
            _finetune(store, run, pretrained, **RESUMED)
    assert saved[-1] == stop_at_step and not (run / "summary.json").exists()
    assert (run / "config.json").is_file() and not (run / "test_metrics.json").exists()
    assert (run / "checkpoint.safetensors").is_file() == (stop_at_step > 0)

    summary = _finetune(store, run, pretrained, resume=True, **RESUMED)
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"}
    _assert_same_tensors(load_file(run / "model.safetensors"), load_file(reference / "model.safetensors"))
    _assert_same_tensors(load_file(run / "checkpoint.safetensors"), load_file(reference / "checkpoint.safetensors"))
    assert read_json(run / "test_metrics.json") == read_json(reference / "test_metrics.json")
    steps = [r for r in read_metrics(run) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, expected["steps"] + 1))
    assert [r["loss"] for r in steps] == pytest.approx(
        [r["loss"] for r in read_metrics(reference) if r["kind"] == "step"], rel=1e-6)
    assert [(r["epoch"], r["step"], r["val_loss"], r["best"]) for r in _epochs(run)] == [
        (r["epoch"], r["step"], r["val_loss"], r["best"]) for r in _epochs(reference)]
    assert [r["loss"] for r in _epochs(run)] == pytest.approx([r["loss"] for r in _epochs(reference)], rel=1e-6)


def test_a_resumed_default_recipe_run_draws_and_keeps_epochs_as_the_uninterrupted_one(store, pretrained, tmp_path, monkeypatch):
    train = BASE_TRAIN | {"epochs": 3, "patience": 3}  # the defaults: probe head, drop path, --select-on auroc-ci
    reference = tmp_path / "reference"
    expected = finetune(store, reference, pretrained=pretrained, train=train, device="cpu", progress=False)
    real = finetune_module.save_checkpoint

    def save_then_interrupt(path, net, optimizer, state):
        real(path, net, optimizer, state)
        if state["step"] == STEPS_PER_EPOCH:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(finetune_module, "save_checkpoint", save_then_interrupt)
        finetune(store, run, pretrained=pretrained, train=train, device="cpu", progress=False)
    summary = finetune(store, run, pretrained=pretrained, train=train, resume=True, device="cpu", progress=False)
    assert {k: v for k, v in summary.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    decisions = [(r["epoch"], r["best"], r["val_gain_ci95"]) for r in _epochs(run)]
    assert decisions == [(r["epoch"], r["best"], r["val_gain_ci95"]) for r in _epochs(reference)]
    assert any(gain is not None for _, _, gain in decisions[1:])  # epochs after the resume were tested against it
    np.testing.assert_array_equal(np.load(run / "kept_validation.npy"), np.load(reference / "kept_validation.npy"))


# 6-8. the command line ----------------------------------------------------------------------------------------------

def test_run_workflow_with_the_original_spellings(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the GPU list falls back to the CPU
    runs = tmp_path / "runs"
    argv = ["run", "--ref_name", "t", "--encoder_size", "xs", "--scheme", "diffusion", "--num_workers", "0",
            "--device", "[0,", "1]", "--store", str(store), "--runs", str(runs), "--epochs", "1",
            "--batch-size", "4", "--finetune-epochs", "1", "--image-size", "64", "--quiet"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "starting pretraining" in out and "skipping" not in out
    assert "\npretrain: " in "\n" + out and "\nfinetune: " in "\n" + out, out
    assert "no GPU" in err and "CPU" in err, err
    pretrain_dir = runs / "t" / "pretrain"
    assert read_json(pretrain_dir / "config.json")["model"]["scheme"] == "diffusion"
    assert read_json(pretrain_dir / "config.json")["model"]["preset"] == "xs"
    assert read_json(pretrain_dir / "summary.json")["epochs"] == 1
    assert (pretrain_dir / "figures" / "reconstruction_epoch_001.png").is_file()
    assert (pretrain_dir / "figures" / "animation.gif").is_file()
    first = runs / "t" / "finetune"
    assert read_json(first / "summary.json")["epochs_run"] == 1
    assert read_json(first / "config.json")["pretrained"] == str(pretrain_dir)
    assert read_json(first / "config.json")["train"]["batch_size"] == 4
    assert (first / "test_metrics.json").is_file()
    weights = pretrain_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.read_bytes())

    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "skipping it, fine-tuning only" in out and "starting pretraining" not in out
    assert "\npretrain: " not in "\n" + out and "\nfinetune: " in "\n" + out
    assert (weights.stat().st_mtime_ns, weights.read_bytes()) == before
    assert (runs / "t" / "finetune-2" / "summary.json").is_file()
    assert str(runs / "t" / "finetune-2") in out
    assert sorted(p.name for p in (runs / "t").iterdir()) == ["finetune", "finetune-2", "pretrain"]


def test_probe_command_on_a_pretraining_run(store, pretrained, capsys):
    code = main(["probe", str(pretrained), "--store", str(store), "--split", "test"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Cardiomegaly" in out and "\nprobe: mean AUROC" in "\n" + out, out
    result = read_json(pretrained / "probe" / "test.json")
    assert result["eval_studies"] == TEST_STUDIES and list(result["labels"]) == list(LABELS)
    assert f"on {TEST_STUDIES} test studies" in out
    assert (pretrained / "probe" / "test.txt").is_file()


def test_finetune_from_a_finetuned_run_is_a_one_line_error(store, finetuned, tmp_path, capsys):
    run, _, _ = finetuned
    target = tmp_path / "again"
    code = main(["finetune", str(store), "--run", str(target), "--from", str(run), "--device", "cpu", "--quiet",
                 "--batch-size", "4", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "fine-tuned" in err and str(run) in err
    assert not (target / "config.json").exists()
