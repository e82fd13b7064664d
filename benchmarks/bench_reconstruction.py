"""Reconstruction error and sharpness of pretrained runs on the validation studies of a store; prints JSON.

For every validation study, each run reconstructs with the same fixed mask (mask seed 0) — DiffMAE
from pure noise with DDIM, the MAE through its decoder — and on the masked patches only, in pixel
space ([-1, 1]):

- ``mse``: mean squared error against the original pixels;
- ``sharpness``: high-frequency energy of the reconstructed masked patches over that of the
  originals (energy of each patch's 2-D spectrum beyond a quarter of the sampling frequency, mean
  removed). 1 = as much fine detail as the originals; below 1 = smoother.

    python benchmarks/bench_reconstruction.py demo/runs/vanilla/pretrain demo/runs/diffusion/pretrain --store demo/store
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import raddiffusion as rd
from raddiffusion.models.vit import patchify

from machine import describe_machine

HIGH_FREQUENCY = 0.25  # cycles per pixel: the upper half of the representable band
MASK_SEED, NOISE_SEED = 0, 0


def high_frequency_energy(patches: torch.Tensor, patch: int) -> torch.Tensor:
    """Energy beyond ``HIGH_FREQUENCY`` of each patch ``[K, patch²]`` (mean removed): ``[K]``."""
    squares = patches.view(-1, patch, patch)
    spectrum = torch.fft.fft2(squares - squares.mean(dim=(1, 2), keepdim=True))
    frequencies = torch.fft.fftfreq(patch)
    radius = (frequencies[:, None] ** 2 + frequencies[None, :] ** 2).sqrt()
    return (spectrum.abs() ** 2 * (radius > HIGH_FREQUENCY)).sum(dim=(1, 2))


@torch.no_grad()
def measure(model, store: rd.Store, steps: int, batch_studies: int) -> dict:
    dataset = rd.StudyDataset(store, split="validate")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_studies, collate_fn=rd.collate_studies)
    patch = model.config.patch_size
    squared, count, energy_reconstructed, energy_original = 0.0, 0, 0.0, 0.0
    for batch in loader:
        result = model.reconstruct(batch["images"], batch["lengths"], mask_seed=MASK_SEED, seed=NOISE_SEED,
                                   steps=steps, **({"return_frames": False} if model.config.scheme == "diffusion" else {}))
        masked = result["mask"]
        original = patchify(batch["images"], patch)[masked]
        reconstructed = patchify(result["reconstruction"], patch)[masked]
        squared += float(((reconstructed - original) ** 2).sum())
        count += original.numel()
        energy_reconstructed += float(high_frequency_energy(reconstructed, patch).sum())
        energy_original += float(high_frequency_energy(original, patch).sum())
    return {"studies": len(dataset), "masked_pixels": count, "mse": round(squared / count, 5),
            "sharpness": round(energy_reconstructed / energy_original, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining run directories")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps of DiffMAE (default 100)")
    parser.add_argument("--batch-studies", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = rd.open_store(args.store)
    results = {}
    for run in args.runs:
        model = rd.load(run)
        results[str(run)] = {"scheme": model.config.scheme, "preset": model.config.preset,
                             **measure(model, store, args.steps, args.batch_studies)}
    print(json.dumps({"benchmark": "reconstruction", **describe_machine(), "ddim_steps": args.steps,
                      "mask_seed": MASK_SEED, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
