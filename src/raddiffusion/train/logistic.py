"""Every label's balanced L2 logistic regression fitted at once, in torch, on the GPU or on all CPU cores.

The linear probe fits one logistic regression per label on the same standardised study vectors. Fitting them one
after another with scikit-learn (the reference, ``--probe-solver sklearn``) costs minutes at MIMIC-CXR's size on one
core. Here the labels share every matrix product: ``Z = X Wᵀ`` for all labels is one ``[n, d] × [d, labels]`` product,
and one L-BFGS per label (its own history and step length, batched) minimises what scikit-learn's ``lbfgs`` solver
minimises with ``class_weight="balanced"``::

    F_k(w, b) = Σ_i s_ik ℓ(y_ik, x_i·w + b) / S_k + ‖w‖² / (2 C S_k)

``s_ik``: the balanced weight of row i for label k (0 where the label's mask drops the row), ``S_k = Σ_i s_ik``,
``ℓ`` the log loss; the intercept is not penalised. A label stops when the largest entry of its gradient is at most
:data:`GRADIENT_TOLERANCE` (scikit-learn's ``gtol``), so both stop at the same point up to that tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

C = 1.0  # inverse L2 strength, scikit-learn's default
MAX_ITER = 1000
HISTORY = 10  # L-BFGS correction pairs (scikit-learn's lbfgs keeps 10)
GRADIENT_TOLERANCE = 1e-4
ARMIJO = 1e-4  # sufficient decrease of the backtracking line search
MAX_HALVINGS = 40
CURVATURE_FLOOR = 1e-12  # a correction pair with s·y below this (× |s||y|) is not kept
WHITENING_FLOOR = 1e-3  # added to the covariance's eigenvalues (the features have unit variance)


@dataclass(frozen=True)
class Fitted:
    """Weights ``[labels, d]``, intercepts ``[labels]`` and the iterations each label took."""

    weight: torch.Tensor
    bias: torch.Tensor
    iterations: torch.Tensor

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, labels]`` probabilities of the positive class for standardised rows ``x``."""
        return torch.sigmoid(x.to(self.weight.dtype) @ self.weight.T + self.bias)


def balanced_weights(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-label sample weights ``[n, labels]``: ``n_k / (2 n_class)`` on the rows the mask keeps, 0 elsewhere.

    A label whose kept rows hold one class only gets all-zero weights (there is nothing to fit).
    """
    kept = mask > 0
    positive = (kept & (targets > 0.5)).sum(0).to(targets.dtype)
    negative = kept.sum(0).to(targets.dtype) - positive
    total = positive + negative
    both = (positive > 0) & (negative > 0)
    weight_positive = torch.where(both, total / (2 * positive.clamp(min=1)), 0)
    weight_negative = torch.where(both, total / (2 * negative.clamp(min=1)), 0)
    return torch.where(targets > 0.5, weight_positive, weight_negative) * kept


def fit_logistic(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, max_iter: int = MAX_ITER,
                 tolerance: float = GRADIENT_TOLERANCE) -> Fitted:
    """Minimise each label's :math:`F_k` over ``x [n, d]`` (standardised), ``targets`` and ``weights`` ``[n, labels]``.

    Everything stays on ``x``'s device and dtype. A label with all-zero weights keeps weights 0. L-BFGS runs in
    whitened coordinates (``w = P v``, ``P = (XᵀX / n + δ I)^(-1/2)``): the same minimum, reached in far fewer
    iterations when the features are correlated; the stopping test uses the gradient in ``w``.
    """
    n, d = x.shape
    labels = targets.shape[1]
    targets, weights = targets.to(x.dtype), weights.to(x.dtype)
    totals = weights.sum(0)
    fitted_labels = totals > 0
    tiny = torch.finfo(x.dtype).tiny
    scaled = weights / totals.clamp(min=tiny)  # s_ik / S_k
    l2 = torch.where(fitted_labels, 1 / (C * totals.clamp(min=tiny)), 0)
    whiten = whitening(x)

    def value(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objective [labels], logits [n, labels], w [labels, d]) at ``theta = [v | b]``."""
        w = theta[:, :d] @ whiten
        logits = torch.addmm(theta[:, d], x, w.T)
        loss = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * scaled).sum(0)
        return loss + 0.5 * l2 * (w**2).sum(1), logits, w

    def gradient(logits: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient in ``[v | b]``, largest gradient entry in ``[w | b]`` per label)."""
        residual = (torch.sigmoid(logits) - targets) * scaled
        grad_w, grad_b = residual.T @ x + l2[:, None] * w, residual.sum(0, keepdim=True).T
        largest = torch.maximum(grad_w.abs().amax(1), grad_b.abs()[:, 0])
        return torch.cat([grad_w @ whiten, grad_b], dim=1), largest

    theta = torch.zeros(labels, d + 1, dtype=x.dtype, device=x.device)
    objective, logits, w = value(theta)
    grad, largest = gradient(logits, w)
    steps, changes, inverse_curvature = [], [], []
    iterations = torch.zeros(labels, dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        active = fitted_labels & (largest > tolerance)
        if not bool(active.any()):
            break
        iterations += active
        direction = -_two_loop(grad, steps, changes, inverse_curvature) * active[:, None]
        if not steps:  # no curvature known yet: a first step of at most unit length
            direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1.0)
        slope = (grad * direction).sum(1)
        theta_next, objective, logits, w = _line_search(theta, direction, objective, slope, active, value)
        grad_next, largest = gradient(logits, w)
        s, y = theta_next - theta, grad_next - grad
        sy = (s * y).sum(1)
        keep = active & (sy > CURVATURE_FLOOR * s.norm(dim=1) * y.norm(dim=1))
        steps.append(s * keep[:, None])
        changes.append(y * keep[:, None])
        inverse_curvature.append(torch.where(keep, 1 / torch.where(keep, sy, 1), 0))
        if len(steps) > HISTORY:
            steps.pop(0), changes.pop(0), inverse_curvature.pop(0)
        theta, grad = theta_next, grad_next
    return Fitted(theta[:, :d] @ whiten, theta[:, d], iterations)


def whitening(x: torch.Tensor) -> torch.Tensor:
    """``(XᵀX / n + δ I)^(-1/2)`` (symmetric) for standardised ``x``; δ = :data:`WHITENING_FLOOR` keeps it bounded
    along directions the rows do not span."""
    covariance = x.T @ x / max(len(x), 1)
    values, vectors = torch.linalg.eigh(covariance)
    return (vectors * (values.clamp(min=0) + WHITENING_FLOOR).rsqrt()) @ vectors.T


def _two_loop(grad: torch.Tensor, steps: list, changes: list, inverse_curvature: list) -> torch.Tensor:
    """H·grad for each label's L-BFGS inverse-Hessian estimate (the two-loop recursion, batched over labels)."""
    q = grad.clone()
    alphas = []
    for s, y, rho in zip(reversed(steps), reversed(changes), reversed(inverse_curvature)):
        alpha = rho * (s * q).sum(1)
        q -= alpha[:, None] * y
        alphas.append(alpha)
    if steps:
        yy = (changes[-1] ** 2).sum(1)
        gamma = torch.where(yy > 0, (steps[-1] * changes[-1]).sum(1) / torch.where(yy > 0, yy, 1), 1)
        gamma = torch.where(gamma > 0, gamma, 1)
        q *= gamma[:, None]
    for s, y, rho, alpha in zip(steps, changes, inverse_curvature, reversed(alphas)):
        beta = rho * (y * q).sum(1)
        q += (alpha - beta)[:, None] * s
    return q


def _line_search(theta, direction, objective, slope, active, value):
    """Backtracking (Armijo) along ``direction``, each label halving its own step until it decreases enough;
    returns the new point and ``value``'s results there."""
    step = torch.ones(len(theta), dtype=theta.dtype, device=theta.device)
    for _ in range(MAX_HALVINGS):
        trial = theta + step[:, None] * direction
        trial_objective, logits, w = value(trial)
        enough = ~active | (trial_objective <= objective + ARMIJO * step * slope)
        if bool(enough.all()):
            break
        step = torch.where(enough, step, step / 2)
    return trial, trial_objective, logits, w
