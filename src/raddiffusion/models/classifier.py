"""The fine-tuning model: the study encoder with a linear head on the study vector."""
from __future__ import annotations

import torch
from torch import nn

from .encoder import StudyEncoder, StudyPretrainer, embed_studies
from .presets import ModelConfig
from .vit import INIT_STD, init_weights


class StudyClassifier(nn.Module):
    """Logits of the 14 labels per study from the shared CLS of its views (``forward``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = StudyEncoder(config)
        self.head = nn.Linear(config.width, config.num_labels)
        self.apply(init_weights)
        nn.init.normal_(self.encoder.cls_token, std=INIT_STD)

    @classmethod
    def from_pretrained(cls, pretrainer: StudyPretrainer) -> StudyClassifier:
        """A classifier whose encoder starts from a pretrained model's encoder (the head starts fresh)."""
        model = cls(pretrainer.config)
        model.encoder.load_state_dict(pretrainer.encoder.state_dict())
        return model

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
