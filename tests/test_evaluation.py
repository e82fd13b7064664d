"""The label-efficient protocol, kNN probe, predictions files, paired comparison, fine-tuning recipe, evaluate grid."""
from __future__ import annotations


import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import raddiffusion as rd
from raddiffusion.cli import main
from raddiffusion.data.fractions import NO_POSITIVE_IN_TRAIN, check_fraction, label_fraction_subset
from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.preprocess import preprocess
from raddiffusion.fileio import read_json
from raddiffusion.results.compare import compare_predictions
from raddiffusion.results.predictions import Predictions, PredictionsError, read_predictions, write_predictions
from raddiffusion.results.runfiles import read_metrics
from raddiffusion.train.evaluate import EvaluateSettings, evaluate
from raddiffusion.train.finetune import evaluate_validation, finetune, finetune_seeds, pos_weight
from raddiffusion.train.selection import KEPT_VALIDATION, EpochSelection
from raddiffusion.train.runs import RunError
from raddiffusion.train.probe import knn_scores, probe_with_predictions

from test_finetune import BASE_TRAIN, ORIGINAL_RECIPE, TINY, TRAIN_STUDIES, pretrained, store  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LABEL_NAMES = ("a", "b", "c")
RESIZED = 96  # fine-tuning at another image size than pretraining


def _cohort(patients: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-3 studies per patient; label a common, b rare (two patients), c never positive."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(patients), rng.integers(1, 4, patients))
    targets = np.zeros((len(subjects), len(LABEL_NAMES)), np.float32)
    targets[:, 0] = rng.random(len(subjects)) < 0.4
    targets[np.isin(subjects, [7, 41]), 1] = 1
    return subjects, targets, np.ones_like(targets)


def test_label_fraction_subsets_are_patient_level_nested_and_keep_every_label():
    subjects, targets, mask = _cohort()
    subsets = {}
    for fraction in (0.01, 0.1, 0.5, 1.0):
        kept, absent = label_fraction_subset(subjects, targets, mask, fraction, seed=3, labels=LABEL_NAMES)
        subsets[fraction] = set(kept.tolist())
        assert absent == {"c": NO_POSITIVE_IN_TRAIN}
        assert targets[kept, 0].any() and targets[kept, 1].any()  # the rare label keeps a positive
        in_subset = np.isin(np.arange(len(subjects)), kept)
        for patient in np.unique(subjects):
            assert len(set(in_subset[subjects == patient])) == 1  # a patient's studies go together
        assert len(kept) >= fraction * len(subjects)
    assert subsets[0.01] <= subsets[0.1] <= subsets[0.5] <= subsets[1.0] == set(range(len(subjects)))
    assert len(subsets[0.1]) < len(subsets[0.5]) < len(subjects)
    other, _ = label_fraction_subset(subjects, targets, mask, 0.5, seed=4, labels=LABEL_NAMES)
    again, _ = label_fraction_subset(subjects, targets, mask, 0.5, seed=3, labels=LABEL_NAMES)
    assert set(again.tolist()) == subsets[0.5] and set(other.tolist()) != subsets[0.5]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), "half"])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match="label fraction must be in"):
        check_fraction(fraction)


def test_select_gives_the_studies_at_the_positions(store):
    full = rd.StudyDataset(rd.open_store(store), "train", labelled_only=True)
    positions = np.array([5, 0, 11])
    subset = full.select(positions)
    assert len(subset) == 3 and list(subset.study_ids) == list(full.study_ids[positions])
    for i, position in enumerate(positions):
        np.testing.assert_array_equal(subset[i]["images"], full[position]["images"])
        np.testing.assert_array_equal(subset[i]["labels"], full[position]["labels"])
    assert list(subset.view_counts()) == list(full.view_counts()[positions])


def test_knn_scores_are_neighbour_votes_by_cosine_similarity():
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    train_y = np.repeat([0, 1], 20)
    train_x = centres[train_y] * rng.uniform(0.5, 3.0, (40, 1)) + rng.normal(0, 0.05, (40, 2))  # scale is ignored
    eval_y = np.array([0, 1, 1, 0])
    eval_x = centres[eval_y] * 10
    y = np.zeros((40, len(LABELS)), np.float32)
    y[:, 0] = train_y
    probabilities, absent = knn_scores(train_x, y, np.ones_like(y), eval_x, LABELS, k=5)
    np.testing.assert_array_equal(probabilities[:, 0], eval_y)
    assert "Cardiomegaly" in absent and "Atelectasis" not in absent
    probabilities, _ = knn_scores(train_x, y, np.ones_like(y), eval_x, LABELS, k=1000)  # more neighbours than studies
    np.testing.assert_allclose(probabilities[:, 0], 0.5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        knn_scores(train_x, y, np.ones_like(y), eval_x, LABELS, k=0)


def _predictions(probabilities: np.ndarray, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    n = len(probabilities)
    targets = (rng.random((n, 2)) < 0.5).astype(np.float32)
    mask = np.ones((n, 2), bool)
    mask[::7, 1] = False
    return Predictions(np.arange(100, 100 + n), np.arange(n) // 2, probabilities, targets, mask, ("x", "y"))


def test_predictions_round_trip_with_uncounted_targets_blank(tmp_path):
    written = _predictions(np.random.default_rng(1).random((20, 2)))
    write_predictions(written, tmp_path / "p.csv")
    read = read_predictions(tmp_path / "p.csv")
    assert read.labels == ("x", "y") and list(read.study_ids) == list(written.study_ids)
    np.testing.assert_array_equal(read.mask, written.mask)
    np.testing.assert_array_equal(read.targets[read.mask], written.targets[written.mask])
    np.testing.assert_allclose(read.probabilities, written.probabilities, atol=1e-7)
    header, first = (tmp_path / "p.csv").read_text().splitlines()[:2]
    assert header.startswith("study_id,subject_id,prob:x,prob:y,true:x,true:y") and first.endswith(",")
    (tmp_path / "bad.csv").write_text("study_id,other\n1,2\n")
    with pytest.raises(PredictionsError, match="not a predictions CSV"):
        read_predictions(tmp_path / "bad.csv")


def test_compare_identical_predictions_is_zero_and_within_noise():
    a = _predictions(np.random.default_rng(2).random((40, 2)))
    result = compare_predictions(a, a, resamples=200)
    assert result["difference"]["difference"] == 0.0 and result["difference"]["ci95"] == [0.0, 0.0]
    assert result["difference"]["within_noise"] and result["labels"] == ["x", "y"]


def test_compare_sees_a_real_difference_and_refuses_other_studies():
    rng = np.random.default_rng(3)
    good = _predictions(np.zeros((200, 2)))
    good = Predictions(good.study_ids, good.subject_ids, good.targets + rng.normal(0, 0.3, (200, 2)), good.targets,
                       good.mask, good.labels)
    noise = Predictions(good.study_ids[::-1], good.subject_ids[::-1], rng.random((200, 2)), good.targets[::-1],
                        good.mask[::-1], good.labels)  # rows in another order: matched by study
    result = compare_predictions(good, noise, resamples=300)
    assert not result["difference"]["within_noise"] and result["difference"]["ci95"][0] > 0
    fewer = Predictions(good.study_ids[:150], good.subject_ids[:150], good.probabilities[:150], good.targets[:150],
                        good.mask[:150], good.labels)
    with pytest.raises(PredictionsError, match="different studies"):
        compare_predictions(good, fewer)
    one_class = Predictions(good.study_ids, good.subject_ids, good.probabilities, np.zeros_like(good.targets),
                            good.mask, good.labels)
    with pytest.raises(PredictionsError, match="nothing to compare"):
        compare_predictions(one_class, one_class)


def test_probe_head_init_starts_fine_tuning_exactly_at_the_linear_probe(store, pretrained, tmp_path):
    run = tmp_path / "lpft"
    finetune(store, run, pretrained=pretrained, train=BASE_TRAIN | {"epochs": 1, "lr": 0.0, "drop_path": 0.0},
             device="cpu", progress=False)
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[0]["best"]
    assert read_json(run / "summary.json")["best_epoch"] == 0  # lr 0: nothing better than the probe's head
    _, probed = probe_with_predictions(rd.load(pretrained), rd.open_store(store), eval_split="test", progress=False)
    tuned = read_predictions(run / "test_predictions.csv").in_order_of(probed.study_ids)
    for k in range(len(LABELS)):
        counted = probed.mask[:, k]
        if len(np.unique(probed.targets[counted, k])) == 2 and probed.probabilities[:, k].any():
            assert roc_auc_score(probed.targets[counted, k], tuned.probabilities[counted, k]) == pytest.approx(
                roc_auc_score(probed.targets[counted, k], probed.probabilities[counted, k]))


def _validation(probabilities: np.ndarray, targets: np.ndarray) -> dict:
    """What ``evaluate_validation`` returns for these probabilities (every label scored, loss unused)."""
    columns = range(targets.shape[1])
    auroc = float(np.mean([roc_auc_score(targets[:, k], probabilities[:, k]) for k in columns]))
    return {"loss": 0.0, "auroc": auroc, "probabilities": probabilities, "scored": list(columns)}


def test_strict_selection_replaces_the_kept_weights_only_for_a_gain_beyond_noise():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(100), 2)
    targets = (rng.random((len(subjects), 2)) < 0.3).astype(np.float32)
    kept = _validation(targets + rng.normal(0, 1.5, targets.shape), targets)
    hair = kept["probabilities"].copy()
    hair[np.flatnonzero(targets[:, 0])[0], 0] = hair.max() + 1  # one positive ranked first: a tiny gain
    slightly, clearly = _validation(hair, targets), _validation(targets + rng.normal(0, 0.3, targets.shape), targets)
    assert 0 < slightly["auroc"] - kept["auroc"] < 0.01 and clearly["auroc"] - kept["auroc"] > 0.2

    strict = EpochSelection("auroc-ci", targets, np.ones_like(targets, bool), subjects, resamples=1000)
    any_gain = EpochSelection("auroc", targets, np.ones_like(targets, bool), subjects, resamples=1000)
    for selection in (strict, any_gain):
        assert selection.improves(kept, None, selection.gain_interval(kept))  # the first epoch is always kept
        selection.keep(kept, write=False)
    assert strict.gain_interval(kept) == [0.0, 0.0] and not strict.improves(kept, kept["auroc"], [0.0, 0.0])
    small_gain = strict.gain_interval(slightly)
    assert small_gain[0] <= 0 < small_gain[1] and not strict.improves(slightly, kept["auroc"], small_gain)
    assert any_gain.gain_interval(slightly) is None and any_gain.improves(slightly, kept["auroc"], None)
    large_gain = strict.gain_interval(clearly)
    assert large_gain[0] > 0 and strict.improves(clearly, kept["auroc"], large_gain)


def test_strict_selection_saves_the_kept_validation_and_a_resumed_run_reads_it(store, pretrained, tmp_path):
    run = tmp_path / "strict"
    finetune(store, run, pretrained=pretrained, train=BASE_TRAIN | {"epochs": 1, "lr": 1e-3}, device="cpu",
             progress=False)
    summary = read_json(run / "summary.json")
    assert summary["selected_on"] == "auroc-ci"  # the default
    train_set, val_set = (rd.StudyDataset(rd.open_store(store), split=s, labelled_only=True) for s in ("train", "validate"))
    kept_model = rd.load(run)  # the kept epoch's weights, whichever epoch that was
    validation = evaluate_validation(kept_model, val_set, pos_weight(train_set), kept_model.head.weight.device, "fp32")
    np.testing.assert_allclose(np.load(run / KEPT_VALIDATION), validation["probabilities"], rtol=1e-5, atol=1e-6)
    resumed = EpochSelection.for_run("auroc-ci", val_set, run, resamples=100, resumed=True)
    np.testing.assert_array_equal(resumed.kept, np.load(run / KEPT_VALIDATION))
    assert EpochSelection.for_run("auroc-ci", val_set, run, resamples=100, resumed=False).kept is None
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert epochs[0]["val_gain_ci95"] is None and (epochs[1]["val_gain_ci95"] is None) == (epochs[0]["val_auroc"] is None)


def test_patience_counts_epochs_without_a_new_high_even_when_it_was_not_kept(store, pretrained, tmp_path, monkeypatch):
    import raddiffusion.train.finetune as finetune_module

    real, scripted, first = finetune_module.evaluate_validation, iter([0.60, 0.61, 0.59, 0.58, 0.57]), []

    def rising_then_falling(*args, **kwargs) -> dict:  # the same predictions every epoch: no gain is ever real
        validation = real(*args, **kwargs)
        first.append(first[0] if first else validation["probabilities"])
        return {**validation, "auroc": next(scripted), "probabilities": first[0]}

    monkeypatch.setattr(finetune_module, "evaluate_validation", rising_then_falling)
    run = tmp_path / "patience"
    finetune(store, run, pretrained=pretrained, train=BASE_TRAIN | {"epochs": 4, "patience": 1}, device="cpu",
             progress=False)
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert [r["val_auroc"] for r in epochs] == [0.60, 0.61, 0.59]  # epoch 1, a new high, restarted the count
    assert [r["best"] for r in epochs] == [True, False, False] and epochs[1]["val_gain_ci95"] == [0.0, 0.0]
    assert read_json(run / "summary.json")["best_epoch"] == 0


def test_label_fraction_and_seeds_in_fine_tuning(store, pretrained, tmp_path):
    train = BASE_TRAIN | ORIGINAL_RECIPE | {"epochs": 1, "label_fraction": 0.5}
    result = finetune_seeds(store, tmp_path / "runs", [0, 1], pretrained=pretrained, train=train, device="cpu",
                            progress=False)
    data = [read_json(tmp_path / "runs" / f"seed-{s}" / "config.json")["data"] for s in (0, 1)]
    assert all(TRAIN_STUDIES / 2 <= d["train_studies_used"] < TRAIN_STUDIES for d in data)
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    values = [s["mean"]["auroc"] for s in result["seeds"]]
    assert result["over_seeds"]["auroc"]["mean"] == pytest.approx(np.mean(values))
    assert result["over_seeds"]["auroc"]["sd"] == pytest.approx(np.std(values, ddof=1))
    assert read_json(tmp_path / "runs" / "seeds.json") == result


def test_fine_tuning_at_another_image_size_recomputes_the_positions(store, pretrained, tmp_path):
    resized = tmp_path / "store96"
    preprocess(store.parent / "mimic", resized, image_size=RESIZED, workers=1, progress=False)
    run = tmp_path / "run"
    finetune(resized, run, pretrained=pretrained, model={"image_size": RESIZED},
             train=BASE_TRAIN | ORIGINAL_RECIPE | {"epochs": 1}, device="cpu", progress=False)
    model = rd.load(run)
    grid = RESIZED // TINY["patch_size"]
    assert model.config.image_size == RESIZED and model.encoder.pos_embed.shape[0] == grid * grid
    with pytest.raises(RunError, match="width 32 -> 64"):
        finetune(resized, tmp_path / "other", pretrained=pretrained, model={"image_size": RESIZED, "width": 64},
                 train=BASE_TRAIN | {"epochs": 1}, device="cpu", progress=False)


def test_evaluate_runs_the_grid_once_and_resumes(store, pretrained, tmp_path, monkeypatch):
    settings = EvaluateSettings(fractions=(0.5, 1.0), seeds=2, methods=("probe", "knn", "finetune"), baselines=True,
                                k=3, resamples=100, finetune=BASE_TRAIN | {"epochs": 1})
    out = tmp_path / "grid"
    evaluation = evaluate([pretrained], store, out, settings, progress=False)
    rows = {(r["model"], r["method"], r["fraction"]): r for r in evaluation["rows"]}
    name = pretrained.name
    expected = {(m, method, f) for f in (0.5, 1.0) for m, method in
                [(name, "probe"), (name, "knn"), (name, "finetune"), ("random init", "probe"),
                 ("random init", "knn"), ("from scratch", "finetune")]}
    assert set(rows) == expected and len(evaluation["cells"]) == 2 * len(expected)
    row = rows[(name, "probe", 1.0)]
    cells = [c for c in evaluation["cells"] if (c["model"], c["method"], c["fraction"]) == (name, "probe", 1.0)]
    assert row["auroc"] == pytest.approx(np.mean([c["mean"]["auroc"] for c in cells]))
    assert row["auroc_ci95"][0] <= row["auroc"] <= row["auroc_ci95"][1]
    compared = rows[(name, "finetune", 1.0)]["vs_baseline"]
    assert compared["baseline"] == "from scratch" and compared["ci95"][0] <= compared["difference"] <= compared["ci95"][1]
    assert compared["difference"] == pytest.approx(row_mean(rows, name, "finetune") - row_mean(rows, "from scratch",
                                                                                             "finetune"))
    assert "vs_baseline" not in rows[("random init", "probe", 1.0)]
    tuned = [c for c in evaluation["cells"] if (c["model"], c["method"], c["fraction"]) == (name, "finetune", 1.0)]
    kept = [read_json((out / c["predictions"]).parent / "summary.json")["best_epoch"] for c in tuned]
    assert [c["best_epoch"] for c in tuned] == kept
    assert rows[(name, "finetune", 1.0)]["kept_epochs"] == kept and all(e in (0, 1) for e in kept)
    assert "kept_epochs" not in row  # probes have no epochs
    table = (out / "evaluate.txt").read_text()
    assert "from scratch, fine-tune" in table and "random init, linear probe" in table and "50 %" in table
    assert "fine-tuning epoch kept" in table and ", ".join(map(str, kept)) in table
    assert read_json(out / "evaluate.json") == evaluation

    import raddiffusion.train.evaluate as evaluate_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(evaluate_module, "finetune", no_training)
    monkeypatch.setattr(evaluate_module, "score_vectors", no_training)
    assert evaluate([pretrained], store, out, settings, progress=False)["rows"] == evaluation["rows"]


def row_mean(rows: dict, model: str, method: str) -> float:
    """The seed-mean AUROC of a row at fraction 1 (the labels scored are the same for every row here)."""
    return rows[(model, method, 1.0)]["auroc"]


def test_cli_probe_knn_fraction_seeds_and_compare(store, pretrained, tmp_path, capsys):
    code = main(["probe", str(pretrained), "--store", str(store), "--split", "test", "--method", "knn", "--k", "3",
                 "--label-fraction", "0.5", "--seeds", "2", "--resamples", "50"])
    out = capsys.readouterr().out
    assert code == 0 and "over 2 seeds" in out
    result = read_json(pretrained / "probe" / "test-knn-f0.5.json")
    assert result["method"] == "knn" and [s["seed"] for s in result["seeds"]] == [0, 1]
    assert (pretrained / "probe" / "test-knn-f0.5.predictions.csv").is_file()
    code = main(["compare", str(pretrained), str(pretrained), "--store", str(store), "--resamples", "50"])
    out = capsys.readouterr().out
    assert code == 0 and "within noise" in out and "\ncompare: A − B mean AUROC +0.000 [+0.000, +0.000] on 4 studies, within noise" in "\n" + out


def test_bad_fractions_and_mismatched_comparisons_are_one_line_errors(store, pretrained, tmp_path, capsys):
    for argv in (["probe", str(pretrained), "--store", str(store), "--label-fraction", "0"],
                 ["evaluate", str(pretrained), "--store", str(store), "--out", str(tmp_path / "e"),
                  "--fractions", "0.1,1.5"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "label fraction in (0, 1]" in capsys.readouterr().err
    a, b = _predictions(np.random.default_rng(4).random((20, 2))), _predictions(np.random.default_rng(5).random((12, 2)))
    write_predictions(a, tmp_path / "a.csv")
    write_predictions(b, tmp_path / "b.csv")
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different studies (20 and 12 studies, 12 in common)" in err
    assert main(["compare", str(pretrained), str(tmp_path / "a.csv")]) == 2
    assert "no test_predictions.csv" in capsys.readouterr().err
