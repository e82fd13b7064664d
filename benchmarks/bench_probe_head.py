"""How much do drop path and augmentation disturb the linear-probe head at the start of fine-tuning? Prints JSON.

Fine-tuning starts its head from the linear probe of the encoder, fitted on clean features (eval
mode, no augmentation). This scores the train split's pos-weighted BCE of that starting model as
the first training step sees it (drop path on, augmented) and with each disturbance alone:

    python benchmarks/bench_probe_head.py STORE RUN [--studies 256]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from raddiffusion.data.augment import augment
from raddiffusion.data.store import open_store
from raddiffusion.data.studies import StudyDataset, collate_studies
from raddiffusion.models import StudyClassifier
from raddiffusion.train.checkpoint import load
from raddiffusion.train.finetune import FinetuneSettings, init_head_from_probe, label_head, masked_bce, pos_weight

from machine import describe_machine

BATCH_STUDIES = 64
CONDITIONS = {"eval": (False, False), "augmented": (False, True), "drop path": (True, False), "both": (True, True)}


@torch.no_grad()
def mean_loss(net: StudyClassifier, dataset, weight: torch.Tensor, drop_path: bool, augmented: bool) -> float:
    """Mean batch loss over ``dataset`` with drop path (train mode) and / or the default augmentation."""
    net.train(drop_path)
    torch.manual_seed(0)
    generator, augmentation = torch.Generator().manual_seed(0), FinetuneSettings().augmentation()
    losses = []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=BATCH_STUDIES, collate_fn=collate_studies):
        images = augment(batch["images"], augmentation, generator) if augmented else batch["images"]
        losses.append(float(masked_bce(net(images, batch["lengths"]), batch["labels"], batch["label_mask"], weight)))
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("run", type=Path, help="a pretraining run")
    parser.add_argument("--studies", type=int, default=256, help="train studies scored (the first N)")
    args = parser.parse_args()
    store = open_store(args.store)
    train = StudyDataset(store, split="train", labelled_only=True)
    net = StudyClassifier.from_pretrained(load(args.run), drop_path=FinetuneSettings().drop_path, **label_head(store))
    init_head_from_probe(net, train, torch.device("cpu"), progress=False)
    scored = torch.utils.data.Subset(train, range(min(args.studies, len(train))))
    weight = pos_weight(train)
    losses = {name: mean_loss(net, scored, weight, *flags) for name, flags in CONDITIONS.items()}
    print(json.dumps({"machine": describe_machine(), "run": str(args.run), "studies": len(scored),
                      "head_row_norm_mean": float(net.head.weight.norm(dim=1).mean()), "train_loss": losses}, indent=1))


if __name__ == "__main__":
    main()
