"""AdamW with the original weight-decay rule and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_SUFFIX = "_token"  # CLS and mask tokens are parameters without weight decay


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weights of linear and conv layers only: not biases, norms, tokens (positions are buffers)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIX):
            decay.append(parameter)
        else:
            no_decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (the fused kernel: one pass over all parameters per step)."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, fused=True)


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Learning-rate factor at ``step``: linear warm-up over the first fraction of steps, then cosine to 0."""
    warmup = max(1, round(total_steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
