"""RadDiffusion: study-level MAE and diffusion-MAE pretraining for chest radiographs.

Public API::

    import raddiffusion as rd
    store = rd.open_store("store/")
    ds = rd.StudyDataset(store, split="train", label_policy="ones")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=rd.collate_studies)
    model = rd.create(preset="xs", scheme="diffusion")

    m = rd.load("runs/x/finetune")                       # a run directory or a .safetensors file
    images, lengths = rd.read_files(["a.dcm", "b.jpg"], m.config.image_size)   # one study
    m.predict(images, lengths)                           # [n_studies, len(m.label_names)] probabilities
    rd.embed_store(rd.load("runs/x/pretrain"), store, "vectors.parquet")

    model = rd.create("b", "vanilla", init="mae_pretrain_vit_base.pth")   # or a Hugging Face ViTMAE folder
    print(model.init_report.line())                      # what was taken, skipped, re-initialised
    rd.export_hf(rd.load("runs/x/pretrain"), "vit-mae/")  # -> transformers.ViTMAEModel.from_pretrained("vit-mae/")
"""
from .data.labels import CHEXPERT_LABELS
from .data.layouts import read_tree
from .data.mimic import read_mimic
from .data.store import Store, open_store
from .data.studies import StudyDataset, collate_studies
from .data.tree import DataError, ImageTree
from .inference.embed import embed_store, read_embeddings
from .inference.files import read_files
from .models import create
from .train.checkpoint import CheckpointError, load, save_model
from .train.interop import export_hf, initialise_from

__all__ = [
    "CHEXPERT_LABELS", "CheckpointError", "DataError", "ImageTree", "Store", "StudyDataset", "collate_studies",
    "create", "embed_store", "export_hf", "initialise_from", "load", "open_store", "read_embeddings", "read_files",
    "read_mimic", "read_tree", "save_model",
]
__version__ = "0.1.0"
