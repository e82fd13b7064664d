"""The fine-tuning model: the study encoder with a linear head on the study vector."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..data.labels import CHEXPERT_LABELS
from .encoder import StudyEncoder, StudyPretrainer, embed_studies
from .presets import ModelConfig
from .vit import INIT_STD, init_weights

ENCODER_SHAPE_FIELDS = ("patch_size", "width", "depth", "heads", "mlp_hidden")  # the pretrained weights fix these


class StudyClassifier(nn.Module):
    """Logits of the labels (``label_names``) per study from the shared CLS of its views (``forward``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = StudyEncoder(config)
        self.head = nn.Linear(config.width, config.num_labels)
        self.apply(init_weights)
        nn.init.normal_(self.encoder.cls_token, std=INIT_STD)

    @classmethod
    def from_pretrained(cls, pretrainer: StudyPretrainer, **overrides) -> StudyClassifier:
        """A classifier whose encoder starts from a pretrained model's encoder (the head starts fresh).

        ``overrides`` are :class:`ModelConfig` fields that leave the encoder's weights usable, e.g.
        ``image_size=512`` (the fixed position table is recomputed for the new patch grid), ``drop_path=0.1``
        or ``grad_checkpoint=True``.
        """
        for name in ENCODER_SHAPE_FIELDS:
            if name in overrides and overrides[name] != getattr(pretrainer.config, name):
                raise ValueError(f"{name} cannot change when fine-tuning a pretrained encoder "
                                 f"({getattr(pretrainer.config, name)} -> {overrides[name]})")
        model = cls(replace(pretrainer.config, **overrides))
        model.encoder.load_state_dict(pretrainer.encoder.state_dict())
        return model

    @property
    def label_names(self) -> tuple[str, ...]:
        """The names of the head's outputs (models saved before they were recorded: the 14 CheXpert labels)."""
        if self.config.label_names:
            return self.config.label_names
        if self.config.num_labels == len(CHEXPERT_LABELS):
            return CHEXPERT_LABELS
        return tuple(f"label {k + 1}" for k in range(self.config.num_labels))

    def embed(self, images: torch.Tensor, lengths: torch.Tensor | list[int]) -> torch.Tensor:
        """Study vectors ``[n_studies, width]``."""
        return embed_studies(self.encoder, images, lengths, self.config.image_size)

    def forward(self, images: torch.Tensor, lengths: torch.Tensor | list[int]) -> torch.Tensor:
        """Label logits ``[n_studies, num_labels]``."""
        return self.head(self.embed(images, lengths))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, lengths: torch.Tensor | list[int]) -> torch.Tensor:
        """Label probabilities ``[n_studies, num_labels]``."""
        return torch.sigmoid(self(images, lengths))
