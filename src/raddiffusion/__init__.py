"""RadDiffusion: study-level MAE and diffusion-MAE pretraining for chest radiographs.

Public API::

    import raddiffusion as rd
    store = rd.open_store("store/")
    ds = rd.StudyDataset(store, split="train", label_policy="ones")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=rd.collate_studies)
    model = rd.create(preset="xs", scheme="diffusion")
"""
from .data.labels import LABELS
from .data.mimic import DataError, read_mimic
from .data.store import Store, open_store
from .data.studies import StudyDataset, collate_studies
from .models import create
from .train.checkpoint import CheckpointError, load, save_model

__all__ = [
    "LABELS", "CheckpointError", "DataError", "Store", "StudyDataset", "collate_studies", "create", "load",
    "open_store", "read_mimic", "save_model",
]
__version__ = "0.1.0"
