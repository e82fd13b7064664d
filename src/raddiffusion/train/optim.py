"""AdamW with the original weight-decay rule, layer-wise lr decay for fine-tuning, and the warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.classifier import StudyClassifier

NO_DECAY_SUFFIX = "_token"  # CLS and mask tokens are parameters without weight decay
ENCODER, HEAD = "encoder", "head"  # the classifier's parts, also the names of their parameter groups


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Whether a parameter takes weight decay: linear and conv weights only, not biases, norms or tokens."""
    return parameter.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIX)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weights of linear and conv layers only: not biases, norms, tokens (positions are buffers)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if decays(name, parameter) else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (the fused kernel: one pass over all parameters per step)."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, fused=True)


def classifier_layer_id(name: str, depth: int) -> int:
    """Layer of a classifier parameter: 0 before the blocks, block ``i`` -> ``i + 1``, final norm and head last."""
    parts = name.split(".")
    if parts[0] != ENCODER:
        return depth + 1
    if parts[1] == "blocks":
        return int(parts[2]) + 1
    return depth + 1 if parts[1] == "norm" else 0


def classifier_parameter_groups(
    model: StudyClassifier, weight_decay: float, layer_decay: float = 1.0, head_lr_scale: float = 1.0
) -> list[dict]:
    """Parameter groups with layer-wise learning-rate decay for fine-tuning (BEiT / MAE recipe).

    A parameter of layer ``k`` (:func:`classifier_layer_id`) gets ``"lr_scale": layer_decay ** (depth + 1 − k)``,
    times ``head_lr_scale`` for the head; ``"name"`` is ``"head"`` or ``"encoder"``; weight decay as in
    :func:`parameter_groups`. :func:`set_learning_rate` applies the scales.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], not {layer_decay}")
    if head_lr_scale <= 0.0:
        raise ValueError(f"head_lr_scale must be positive, not {head_lr_scale}")
    depth = len(model.encoder.blocks)
    groups: dict[tuple[str, int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer, decay = classifier_layer_id(name, depth), decays(name, parameter)
        part = ENCODER if name.startswith(f"{ENCODER}.") else HEAD
        scale = layer_decay ** (depth + 1 - layer) * (head_lr_scale if part == HEAD else 1.0)
        group = groups.setdefault((part, layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale, "name": part,
        })
        group["params"].append(parameter)
    return list(groups.values())


def build_classifier_optimizer(
    model: StudyClassifier, lr: float, weight_decay: float, layer_decay: float = 1.0, head_lr_scale: float = 1.0
) -> torch.optim.AdamW:
    """Fused AdamW over :func:`classifier_parameter_groups`, each group already at ``lr · lr_scale``."""
    groups = classifier_parameter_groups(model, weight_decay, layer_decay, head_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)
    set_learning_rate(optimizer, lr)
    return optimizer


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Learning-rate factor at ``step``: linear warm-up over the first fraction of steps, then cosine to 0."""
    warmup = max(1, round(total_steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, encoder_lr_factor: float = 1.0) -> None:
    """Set every group to ``lr`` times its ``lr_scale`` (if any) and ``encoder_lr_factor`` if named "encoder".

    ``encoder_lr_factor=0`` holds the encoder still (e.g. while the head warms up); groups without these
    keys (pretraining) get ``lr`` itself.
    """
    for group in optimizer.param_groups:
        factor = encoder_lr_factor if group.get("name") == ENCODER else 1.0
        group["lr"] = lr * group.get("lr_scale", 1.0) * factor
