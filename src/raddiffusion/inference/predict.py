"""Label probabilities of a fine-tuned model for studies read from files, as JSON or CSV."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import torch

from ..models import StudyClassifier
from .files import FileStudy, study_batch

PROBABILITY_DECIMALS = 6
STUDIES_PER_BATCH = 16


@dataclass
class Prediction:
    """One study's probabilities (label -> value), or ``None`` when none of its files could be read."""

    study: FileStudy
    probabilities: dict[str, float] | None


def check_classifier(model: torch.nn.Module, source: object) -> StudyClassifier:
    """``model`` if it is fine-tuned; a pretraining model gets a ValueError saying what to do instead."""
    if not isinstance(model, StudyClassifier):
        raise ValueError(f"{source}: a pretraining model has no label head; fine-tune it first "
                         f"(`raddiffusion finetune STORE --run RUN --from {source}`) and predict with that run")
    return model


@torch.no_grad()
def predict_studies(model: StudyClassifier, studies: list[FileStudy], device: str | torch.device = "cpu"
                    ) -> list[Prediction]:
    """``model.predict`` for each study with at least one readable view, in batches of whole studies."""
    model.eval()
    readable = [study for study in studies if study.views]
    values: dict[int, list[float]] = {}
    for start in range(0, len(readable), STUDIES_PER_BATCH):
        batch = readable[start : start + STUDIES_PER_BATCH]
        images, lengths = study_batch(batch)
        probabilities = model.predict(images.to(device), lengths.to(device)).float().cpu()
        values.update({id(study): row.tolist() for study, row in zip(batch, probabilities)})
    named = [_named(values[id(study)], model.label_names) if id(study) in values else None for study in studies]
    return [Prediction(study, probabilities) for study, probabilities in zip(studies, named)]


def _named(row: list[float], labels: tuple[str, ...]) -> dict[str, float]:
    return {label: round(value, PROBABILITY_DECIMALS) for label, value in zip(labels, row)}


def predictions_json(predictions: list[Prediction]) -> str:
    """``{study: {label: probability}}`` for every predicted study, indented JSON."""
    return json.dumps({p.study.name: p.probabilities for p in predictions if p.probabilities is not None}, indent=2)


def predictions_csv(predictions: list[Prediction]) -> str:
    """One row per predicted study: ``study, views`` and one column per label of the model."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    predicted = [p for p in predictions if p.probabilities is not None]
    labels = list(predicted[0].probabilities) if predicted else []
    writer.writerow(["study", "views", *labels])
    for p in predicted:
        writer.writerow([p.study.name, p.study.views, *(p.probabilities[label] for label in labels)])
    return out.getvalue()
