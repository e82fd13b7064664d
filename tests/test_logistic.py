"""The batched logistic regression of the linear probe: the minimum scikit-learn's lbfgs finds, for every label at once."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.utils.class_weight import compute_class_weight

from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.train.logistic import GRADIENT_TOLERANCE, balanced_weights, fit_logistic
from raddiffusion.train.probe import fit_label_regressions, linear_probe_scores

WIDTH = 48
AUROC_AGREEMENT = 0.002


def _probe_like(rng: np.random.Generator, studies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlated vectors (a 1/i variance spectrum, rotated) with one direction per label; rare and masked labels."""
    rotation, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((WIDTH, WIDTH)))
    noise = rng.standard_normal((studies, WIDTH)) * np.sqrt(WIDTH / np.arange(1, WIDTH + 1) / 4.5) @ rotation.T
    rates = np.linspace(0.02, 0.5, len(LABELS))
    targets = (rng.random((studies, len(LABELS))) < rates).astype(np.float32)
    directions = np.random.default_rng(2).standard_normal((len(LABELS), WIDTH))
    vectors = (noise + targets @ (directions / np.linalg.norm(directions, axis=1, keepdims=True))).astype(np.float32)
    mask = (rng.random((studies, len(LABELS))) > 0.2).astype(np.float32)  # 'ignore': a fifth of each label dropped
    return vectors, targets, mask


def _objective(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
    """Each label's balanced, L2-penalised (C = 1) log loss, divided by its weights' sum: what both solvers minimise."""
    logits = x @ weight.T + bias
    loss = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights).sum(0)
    return (loss + 0.5 * (weight**2).sum(1)) / weights.sum(0)


def test_balanced_weights_are_sklearns_on_the_kept_rows():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 3)) < [0.1, 0.5, 0.0]).astype(np.float32)
    mask = (rng.random((200, 3)) > 0.3).astype(np.float32)
    weights = balanced_weights(torch.from_numpy(targets), torch.from_numpy(mask)).numpy()
    for k in range(2):
        kept = mask[:, k] > 0
        expected = compute_class_weight("balanced", classes=np.array([0.0, 1.0]), y=targets[kept, k])
        np.testing.assert_allclose(weights[kept, k], expected[targets[kept, k].astype(int)], rtol=1e-6)
        assert (weights[~kept, k] == 0).all()
    assert (weights[:, 2] == 0).all()  # one class only: nothing to fit


def test_every_label_reaches_the_minimum_sklearn_reaches():
    rng = np.random.default_rng(0)
    train_x, train_y, train_mask = _probe_like(rng, 3000)
    scaler, fitted = fit_label_regressions(train_x, train_y, train_mask)
    x = torch.from_numpy(scaler.transform(train_x)).double()
    targets = torch.from_numpy(train_y).double()
    weights = balanced_weights(targets, torch.from_numpy(train_mask).double())
    ours = fit_logistic(x, targets, weights)
    theirs = _objective(x, targets, weights, torch.tensor(np.stack([f.coef_[0] for f in fitted]), dtype=x.dtype),
                        torch.tensor([f.intercept_[0] for f in fitted], dtype=x.dtype))
    mine = _objective(x, targets, weights, ours.weight, ours.bias)
    assert (mine - theirs).abs().max() < 1e-5, (mine - theirs).tolist()  # the same minimum, up to the tolerance
    assert (ours.iterations > 0).all() and (ours.iterations < 100).all()
    weight = ours.weight.clone().requires_grad_()
    bias = ours.bias.clone().requires_grad_()
    _objective(x, targets, weights, weight, bias).sum().backward()
    assert weight.grad.abs().max() <= GRADIENT_TOLERANCE and bias.grad.abs().max() <= GRADIENT_TOLERANCE


@pytest.mark.parametrize("features", ["correlated", "constant and repeated columns"])
def test_batched_probe_scores_agree_with_sklearn(features):
    rng = np.random.default_rng(3)
    train_x, train_y, train_mask = _probe_like(rng, 4000)
    eval_x, eval_y, eval_mask = _probe_like(rng, 2000)
    if features != "correlated":
        train_x[:, 0], eval_x[:, 0] = 3.0, 3.0  # a constant feature
        train_x[:, 1], eval_x[:, 1] = train_x[:, 2], eval_x[:, 2]  # the same feature twice
    train_y[:, -1] = 0.0  # one class in train
    batched, absent = linear_probe_scores(train_x, train_y, train_mask, eval_x, LABELS, solver="torch")
    reference, absent_reference = linear_probe_scores(train_x, train_y, train_mask, eval_x, LABELS, solver="sklearn")
    assert absent == absent_reference == {LABELS[-1]: "only one class in train"}
    assert batched.dtype == np.float64 and (batched[:, -1] == 0).all()
    for k in range(len(LABELS) - 1):
        kept = eval_mask[:, k] > 0
        ours, theirs = (roc_auc_score(eval_y[kept, k], p[kept, k]) for p in (batched, reference))
        assert abs(ours - theirs) <= AUROC_AGREEMENT, LABELS[k]
        assert ours > 0.6, LABELS[k]  # the label's direction is found
    assert np.abs(batched[:, :-1] - reference[:, :-1]).max() < 0.05


def test_an_unknown_solver_is_refused():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="probe solver must be one of torch, sklearn, not 'lbfgs'"):
        linear_probe_scores(x, x, x, x, ("a", "b"), solver="lbfgs")
