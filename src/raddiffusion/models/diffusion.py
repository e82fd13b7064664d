"""Noise schedules, the forward process and the reverse sampler (DDPM posterior or DDIM) for x0 prediction.

Schedules:
- ``seed``: the original's, T = 100, β_t = linspace(1e-4, 0.2, T)², ᾱ_T ≈ 0.257 (the noisiest step
  still carries about half of the signal);
- ``cosine`` (default, Nichol & Dhariwal), T = 1000, ᾱ_T ≈ 0;
- ``linear``: β from 1e-4 to 0.02 over T = 1000, ᾱ_T ≈ 4e-5.

Sampling always starts from pure Gaussian noise. Under ``seed`` that is not what the model saw at
the last training step (ᾱ_T ≈ 0.257): the honest price of that schedule, and why it is not the default.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

DEFAULT_TIMESTEPS = {"seed": 100, "cosine": 1000, "linear": 1000}
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def make_betas(schedule: str, timesteps: int | None = None) -> torch.Tensor:
    """β_1 … β_T (float64) of a named schedule."""
    steps = timesteps or DEFAULT_TIMESTEPS[schedule]
    if schedule == "seed":
        return torch.linspace(1e-4, 0.2, steps, dtype=torch.float64) ** 2
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = torch.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)
    raise ValueError(f"unknown noise schedule {schedule!r}")


class NoiseSchedule(nn.Module):
    """A schedule's coefficients, the forward process and one reverse step.

    Coefficients are computed in float64 and kept as float32 buffers. The ``sqrt_*`` tables start with
    "clean" (ᾱ = 1): entry ``t + 1`` is step ``t``. The last reverse step returns the predicted x0 exactly.
    """

    def __init__(self, schedule: str = "cosine", timesteps: int | None = None):
        super().__init__()
        betas = make_betas(schedule, timesteps)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.timesteps = len(betas)
        tables = {
            "alpha_bar": alpha_bar,
            "sqrt_alpha_bar": torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar.sqrt()]),
            "sqrt_one_minus_alpha_bar": torch.cat([torch.zeros(1, dtype=torch.float64), (1 - alpha_bar).sqrt()]),
            "posterior_x0": alpha_bar_prev.sqrt() * betas / (1 - alpha_bar),
            "posterior_xt": (1 - betas).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar),
            "posterior_std": (betas * (1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt(),
        }
        for name, values in tables.items():
            self.register_buffer(name, values.float(), persistent=False)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε`` with one ``t`` per image (``t [N]``, ``x0 [N, ...]``)."""
        shape = (-1, *([1] * (x0.dim() - 1)))
        signal, noise_scale = self.sqrt_alpha_bar[t + 1].view(shape), self.sqrt_one_minus_alpha_bar[t + 1].view(shape)
        return signal * x0 + noise_scale * noise

    def ddpm_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        """Sample the DDPM posterior q(x_{t−1} | x_t, x0); the mean (x0 itself) at ``t = 0``."""
        mean = self.posterior_x0[t] * x0 + self.posterior_xt[t] * x_t
        if t == 0:
            return mean
        return mean + self.posterior_std[t] * gaussian_like(x_t, generator)

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """Deterministic DDIM (η = 0) from step ``t`` to ``t_prev`` (−1: the clean image, x0 itself)."""
        if t_prev < 0:
            return x0
        noise = (x_t - self.sqrt_alpha_bar[t + 1] * x0) / self.sqrt_one_minus_alpha_bar[t + 1]
        return self.sqrt_alpha_bar[t_prev + 1] * x0 + self.sqrt_one_minus_alpha_bar[t_prev + 1] * noise

    def sampling_timesteps(self, steps: int | None) -> list[int]:
        """T−1 … 0: all of them (``None``, DDPM) or ``steps`` evenly spaced ones (DDIM)."""
        if steps is None:
            return list(range(self.timesteps - 1, -1, -1))
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be between 1 and {self.timesteps}, not {steps}")
        spaced = torch.linspace(self.timesteps - 1, 0, steps).round().long().tolist()
        return sorted(set(spaced), reverse=True)

    def sample(
        self,
        predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        generator: torch.Generator,
        device: torch.device,
        steps: int | None = None,
        on_step: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Reverse diffusion from pure Gaussian noise; ``predict_x0(x_t, t [N])`` is the denoiser.

        ``steps=None`` runs the DDPM posterior over all T steps, an integer runs DDIM with that many.
        ``on_step`` sees the start and every intermediate ``x``.
        """
        x = torch.randn(shape, generator=generator).to(device)
        if on_step is not None:
            on_step(x)
        timesteps = self.sampling_timesteps(steps)
        for i, t in enumerate(timesteps):
            x0 = predict_x0(x, torch.full((shape[0],), t, device=device, dtype=torch.long)).clamp(-1.0, 1.0)
            if steps is None:
                x = self.ddpm_step(x, x0, t, generator)
            else:
                x = self.ddim_step(x, x0, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1)
            if on_step is not None:
                on_step(x)
        return x


def gaussian_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape from ``generator`` (a CPU generator), on ``x``'s device."""
    return torch.randn(x.shape, generator=generator).to(x.device)
