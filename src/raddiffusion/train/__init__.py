"""Training: checkpoints (and, next, pretraining, probing, fine-tuning, distributed runs)."""
