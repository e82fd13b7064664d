"""Study vectors of a whole store, streamed to a Parquet or ``.npz`` file in bounded memory.

Studies are embedded in chunks; each finished chunk is saved under ``OUT.parts/`` (the resume
point) and the store pages it read are dropped from resident memory. When all chunks exist they
are streamed into OUT (written under a temporary name, then renamed) and the parts are removed.
An interrupted run resumes from its finished chunks if the model, store and settings are the same.

Both formats hold one row per study: ``subject_id``, ``study_id``, ``split``, ``views`` and the
``embedding`` (float32 ``[width]``; in Parquet a fixed-size list column).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ..data.store import Store
from ..data.studies import StudyDataset
from ..fileio import atomic_path, read_json, write_json
from ..train.probe import study_vectors

FORMATS = (".parquet", ".npz")
CHUNK_STUDIES = 2048  # studies per resume point (and per Parquet row group)
PARTS_SUFFIX = ".parts"
PARTS_META = "meta.json"
EMBED_FORMAT = "raddiffusion-embeddings-v1"
ID_COLUMNS = ("subject_id", "study_id", "split", "views")
EMBEDDING = "embedding"
HASH_BLOCK = 1 << 20


@dataclass
class EmbedSummary:
    """What :func:`embed_store` wrote."""

    out: Path
    studies: int
    images: int
    width: int
    seconds: float
    resumed_studies: int

    def line(self) -> str:
        rate = (self.studies - self.resumed_studies) / self.seconds if self.seconds > 0 else float("nan")
        resumed = f", {self.resumed_studies} from an interrupted run" if self.resumed_studies else ""
        return (f"embed: {self.studies} studies ({self.images} images) -> {self.out} ({self.width}-d vectors{resumed}) "
                f"in {self.seconds:.1f}s, {rate:.1f} studies/s")


def check_output(out: Path) -> None:
    """ValueError unless ``out`` ends in .parquet or .npz."""
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"{out}: the output must end in {' or '.join(FORMATS)} (the format is chosen by it)")


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the names and bytes of the model's state (which weights produced a vector)."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        for start in range(0, data.size, HASH_BLOCK):
            digest.update(data[start : start + HASH_BLOCK].tobytes())
    return digest.hexdigest()


def study_table(dataset: StudyDataset) -> pd.DataFrame:
    """The id columns of every study of ``dataset``, in its order."""
    return pd.DataFrame({
        "subject_id": dataset.subject_ids.astype(np.int64), "study_id": dataset.study_ids.astype(np.int64),
        "split": dataset.splits.astype(str), "views": dataset.view_counts().astype(np.int32),
    })


def embed_store(
    model: torch.nn.Module, store: Store, out: str | Path, split: str | None = None, batch_size: int = 64,
    device: str | torch.device = "cpu", progress: bool = True, chunk_studies: int = CHUNK_STUDIES,
) -> EmbedSummary:
    """``model.embed`` of every study of ``store`` (of ``split``; ``None``: all) written to ``out``.

    ``model`` must already be on ``device``. See the module docstring for the format and resuming.
    """
    out = Path(out)
    check_output(out)
    if batch_size < 1 or chunk_studies < 1:
        raise ValueError("batch_size and chunk_studies must be at least 1")
    started = time.perf_counter()
    dataset = StudyDataset(store, split=split)
    if not len(dataset):
        raise ValueError(f"{store.root}: no studies{f' in the {split} split' if split else ''} to embed")
    width = model.config.width
    meta = {"format": EMBED_FORMAT, "model": model_fingerprint(model), "store": str(store.root.resolve()),
            "images": len(store), "split": split, "studies": len(dataset), "width": width,
            "chunk_studies": chunk_studies, "batch_size": batch_size}
    parts = open_parts(out, meta)
    chunks = [range(start, min(start + chunk_studies, len(dataset))) for start in range(0, len(dataset), chunk_studies)]
    done = [chunk_file(parts, i).is_file() for i in range(len(chunks))]
    resumed = sum(len(chunk) for chunk, finished in zip(chunks, done) if finished)
    with tqdm(total=len(dataset), initial=resumed, desc="embed", unit="study", disable=not progress) as bar:
        for i, chunk in enumerate(chunks):
            if done[i]:
                continue
            vectors = []
            for start in range(0, len(chunk), batch_size):
                batch = chunk[start : start + batch_size]
                vectors.append(study_vectors(model, Subset(dataset, batch), batch_size=batch_size, device=device,
                                             progress=False))
                store.images.release_pages()
                bar.update(len(batch))
            save_chunk(chunk_file(parts, i), np.concatenate(vectors))
    write_embeddings(out, study_table(dataset), [chunk_file(parts, i) for i in range(len(chunks))], width,
                     {"model": model.config.to_dict(), "store": meta["store"], "split": split})
    shutil.rmtree(parts)
    return EmbedSummary(out, len(dataset), dataset.num_images(), width, time.perf_counter() - started, resumed)


def open_parts(out: Path, meta: dict) -> Path:
    """The parts folder of ``out``; started afresh when it was written for another model, store or setting."""
    parts = out.with_name(out.name + PARTS_SUFFIX)
    meta_file = parts / PARTS_META
    if parts.is_dir() and (not meta_file.is_file() or read_json(meta_file) != meta):
        shutil.rmtree(parts)
    if not parts.is_dir():
        parts.mkdir(parents=True)
        write_json(meta_file, meta)
    return parts


def chunk_file(parts: Path, index: int) -> Path:
    return parts / f"chunk-{index:06d}.npy"


def save_chunk(path: Path, vectors: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors.astype(np.float32, copy=False))


def write_embeddings(out: Path, ids: pd.DataFrame, chunks: list[Path], width: int, info: dict) -> Path:
    """Stream the id table and the chunk files into ``out`` (format by extension), atomically."""
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            write_parquet(tmp, ids, chunks, width, info)
        else:
            write_npz(tmp, ids, chunks, width, info)
    return out


def write_parquet(path: Path, ids: pd.DataFrame, chunks: list[Path], width: int, info: dict) -> None:
    """One row group per chunk; ``embedding`` is a fixed-size list of float32."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("subject_id", pa.int64()), ("study_id", pa.int64()), ("split", pa.string()),
                        ("views", pa.int32()), (EMBEDDING, pa.list_(pa.float32(), width))],
                       metadata={"raddiffusion": json.dumps({"format": EMBED_FORMAT, **info})})
    start = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for file in chunks:
            vectors = np.load(file)
            rows = ids.iloc[start : start + len(vectors)]
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)
            columns = [pa.array(rows[name].to_numpy()) for name in ID_COLUMNS] + [embedding]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            start += len(vectors)


def write_npz(path: Path, ids: pd.DataFrame, chunks: list[Path], width: int, info: dict) -> None:
    """An uncompressed ``.npz`` whose ``embedding.npy`` member is written chunk by chunk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in ID_COLUMNS:
            column = ids[name].to_numpy()
            write_member(archive, name, column.astype(str) if column.dtype == object else column)
        write_member(archive, "info", np.array(json.dumps({"format": EMBED_FORMAT, **info})))
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (len(ids), width)}
        with archive.open(f"{EMBEDDING}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            for file in chunks:
                member.write(np.ascontiguousarray(np.load(file), dtype="<f4").tobytes())


def write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """``(ids, vectors)`` of a file written by ``raddiffusion embed``: the id columns and float32 ``[n, width]``."""
    path = Path(path)
    check_output(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = table.column(EMBEDDING).combine_chunks()
        vectors = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
        return table.select(list(ID_COLUMNS)).to_pandas(), vectors
    with np.load(path, allow_pickle=False) as archive:
        return pd.DataFrame({name: archive[name] for name in ID_COLUMNS}), archive[EMBEDDING]
