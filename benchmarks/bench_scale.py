"""Scale check: a 100k-image store, the training loader, embed and the linear probe, and a projection of
the original experiment (MIMIC-CXR, 200 epochs, probes every 10) onto 1 and 8 GPUs; prints JSON.

1. Store: a few demo subjects are synthesised and preprocessed (``synth`` -> ``preprocess``); their uint8
   images are tiled (each copy rolled and every other copy flipped, so copies differ) into
   ``images.u8`` of at least ``--images`` images, with MIMIC-like ``index.csv`` / ``labels.csv`` /
   ``skipped.csv`` / ``done.json`` (views per study, studies per subject and split shares as below;
   14 CheXpert labels with approximate MIMIC-like rates of 1 / 0 / -1 / blank); ``open_store`` opens it.
2. Loader: the training loader as ``pretrain`` builds it (``loop.training_loader``) over ``StudyDataset(split="train")`` with an ``EpochPlan`` of
   ``--batch-size`` studies, the same ``--loader-batches`` batches with 0 / 2 / 4 workers: first cold
   (the store's pages evicted from the OS page cache with ``posix_fadvise(DONTNEED)``, checked with
   ``fincore``), then warm (the same batches again). CPU seconds of the main process and of the
   workers are counted (``getrusage``, ``/proc``), so a rate per busy core can be given on a shared
   machine; a diagnostic times what a worker pays to hand a float32 or a uint8 batch over.
3. Embed: ``embed_store`` with a randomly initialised xs model over the first ``--embed-studies``
   studies of the store (a prefix of it: the full store takes too long on two cores), in a fresh process.
   Probe: ``linear_probe_scores`` with both solvers (``sklearn``, the 14 fits one after another, and
   ``torch``, all at once) on the same synthetic study vectors, one fresh process per size: ``--probe-train``
   train × ``--probe-eval`` eval studies and ``--probe-small`` train × a MIMIC-validate-sized eval, each at
   256-d (xs) and 768-d (b), 14 labels (correlated noise with a 1/i variance spectrum plus one direction
   per label): time, CPU time, iterations per label, the largest per-label AUROC difference between the
   solvers, and the bootstrap metrics on a MIMIC-validate-sized split. Each size runs once with
   ``--threads`` torch and BLAS threads (default 1: CPU seconds are then the time on one core of its own,
   which this shared machine cannot give) and once with every core of this machine.
4. Projection: MIMIC-CXR's official split, xs and b, 200 epochs, probes at epoch 0 and every 10 epochs,
   on 1 and 8 GPUs, from the H200 training rates of BENCHMARKS.md and the rates measured here, with the
   probe as it was (process 0 embeds, sklearn) and as it is (every rank embeds its share, torch); every
   assumption is named in the JSON.

    python benchmarks/bench_scale.py [--images 100000] [--image-size 256] [--loader-batches 120]
        [--workers 0,2,4] [--batch-size 64] [--embed-studies 2000] [--probe-train 100000]
        [--probe-eval 100000] [--probe-small 25000] [--threads 1] [--work out] [--keep]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import raddiffusion as rd
from raddiffusion.data.labels import CHEXPERT_LABELS, apply_label_policy
from raddiffusion.data.preprocess import available_cpus
from raddiffusion.data.store import (DONE_FILE, IMAGES_FILE, INDEX_FILE, LABELS_FILE, SKIPPED_FILE, STORE_FORMAT,
                                     shard_dirname)
from raddiffusion.data.tree import SKIPPED_COLUMNS
from raddiffusion.fileio import write_json
from raddiffusion.train import loop

from machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
LOADER_API = "training_loader: uint8 batches, persistent workers"

# MIMIC-CXR (../shared/SPEC.md, ../shared/DATASETS.md): 377,110 images, 227,835 studies, 65,379 patients.
MIMIC_IMAGES, MIMIC_STUDIES, MIMIC_SUBJECTS = 377_110, 227_835, 65_379
# Its official split (mimic-cxr-2.0.0-split.csv, MIMIC-CXR-JPG paper): train / validate / test; the
# three rows add up to the totals above exactly.
MIMIC_SPLIT = {"train": (368_960, 222_758, 64_586), "validate": (2_991, 1_808, 500), "test": (5_159, 3_269, 293)}
VIEWS_PER_STUDY = (1, 2, 3, 4)
VIEW_SHARES = (0.43, 0.49, 0.07, 0.01)  # mean 1.66 = 377,110 / 227,835
STUDIES_PER_SUBJECT = MIMIC_STUDIES / MIMIC_SUBJECTS  # 3.48, geometric (many patients with one study)
SPLIT_SHARES = {"train": 0.98, "validate": 0.01, "test": 0.01}  # by subject
# Approximate shares of studies with value 1 / 0 / -1 per label (the rest blank), MIMIC-like, not MIMIC's table.
LABEL_RATES = {
    "Atelectasis": (0.20, 0.01, 0.05), "Cardiomegaly": (0.20, 0.07, 0.03), "Consolidation": (0.05, 0.12, 0.02),
    "Edema": (0.12, 0.11, 0.06), "Enlarged Cardiomediastinum": (0.03, 0.07, 0.04), "Fracture": (0.02, 0.004, 0.003),
    "Lung Lesion": (0.03, 0.004, 0.005), "Lung Opacity": (0.23, 0.02, 0.02), "No Finding": (0.33, 0.0, 0.0),
    "Pleural Effusion": (0.24, 0.12, 0.03), "Pleural Other": (0.009, 0.001, 0.004), "Pneumonia": (0.07, 0.11, 0.08),
    "Pneumothorax": (0.045, 0.25, 0.005), "Support Devices": (0.29, 0.01, 0.003),
}

# GPU inputs: BENCHMARKS.md, "Models on a GPU (H200)", bench_models.py, one H200, bf16, 2026-11-26.
H200_TRAINING_IMAGES_PER_S = {
    "b vanilla bf16": 2_229, "b vanilla bf16 + torch.compile": 3_018, "b DiffMAE cross-self bf16": 3_047,
    "xs vanilla bf16": 17_757,
}
WIDTH = {"xs": 256, "b": 768}
EPOCHS, PROBE_EVERY = 200, 10
SCALING_EFFICIENCY_8 = 0.90  # assumption
DEFAULT_LOADER_WORKERS = 4  # pretrain's --workers default: the probe's embedding loads through them
EMBED_OVER_TRAINING = 3.0  # assumption: forward-only embedding ≈ 3× the training images/s on the same GPU


# ---------------------------------------------------------------------------------------------- store


def mimic_like_tables(min_images: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An index table (store order) of at least ``min_images`` images and one label row per study."""
    rng = np.random.default_rng(seed)
    per_study_mean = float(np.dot(VIEWS_PER_STUDY, VIEW_SHARES))
    subjects = int(min_images / (STUDIES_PER_SUBJECT * per_study_mean) * 1.2) + 100
    studies_of = rng.geometric(1 / STUDIES_PER_SUBJECT, subjects)
    views_of = rng.choice(VIEWS_PER_STUDY, int(studies_of.sum()), p=VIEW_SHARES)
    study_subject = np.repeat(np.arange(subjects), studies_of)
    images_per_subject = np.bincount(study_subject, weights=views_of, minlength=subjects).astype(np.int64)
    keep_subjects = int(np.searchsorted(np.cumsum(images_per_subject), min_images)) + 1
    keep_studies = int(studies_of[:keep_subjects].sum())
    study_subject, views_of = study_subject[:keep_studies], views_of[:keep_studies]
    draw = rng.random(keep_subjects)
    subject_split = np.where(draw < SPLIT_SHARES["train"], "train",
                             np.where(draw < SPLIT_SHARES["train"] + SPLIT_SHARES["validate"], "validate", "test"))
    subject_ids = 10_000_000 + np.arange(keep_subjects, dtype=np.int64)
    study_ids = 50_000_000 + np.arange(keep_studies, dtype=np.int64)
    image_study = np.repeat(np.arange(keep_studies), views_of)
    position = np.arange(len(image_study)) - np.repeat(np.cumsum(views_of) - views_of, views_of)
    frontal = np.where(rng.random(len(image_study)) < 0.6, "AP", "PA")
    view = np.where(position == 0, frontal, np.where(position == 1, "LATERAL", np.where(position == 2, "AP", "LL")))
    index = pd.DataFrame({
        "image_id": [f"{k:08x}-{(k * 2654435761) % 2**32:08x}-bench" for k in range(len(image_study))],
        "subject_id": subject_ids[study_subject[image_study]],
        "study_id": study_ids[image_study],
        "view": view,
        "split": subject_split[study_subject[image_study]],
    })
    raw = np.full((keep_studies, len(CHEXPERT_LABELS)), np.nan, np.float32)
    for k, name in enumerate(CHEXPERT_LABELS):
        positive, negative, uncertain = LABEL_RATES[name]
        draw = rng.random(keep_studies)
        raw[draw < positive + negative + uncertain, k] = -1.0
        raw[draw < positive + negative, k] = 0.0
        raw[draw < positive, k] = 1.0
    labels = pd.DataFrame(raw, columns=list(CHEXPERT_LABELS))
    labels.insert(0, "subject_id", subject_ids[study_subject])
    labels.insert(0, "study_id", study_ids)
    return index, labels


def demo_images(work: Path, subjects: int, image_size: int) -> np.ndarray:
    """The uint8 images of a small demo store (synth -> preprocess)."""
    from raddiffusion.data.preprocess import preprocess
    from raddiffusion.data.synth import synthesize

    synthesize(work / "demo-tree", subjects=subjects, seed=0, workers=2, progress=False)
    preprocess(work / "demo-tree", work / "demo-store", image_size=image_size, workers=2, progress=False)
    images = rd.open_store(work / "demo-store").images[:]
    shutil.rmtree(work / "demo-tree")
    shutil.rmtree(work / "demo-store")
    return images


def write_images(path: Path, base: np.ndarray, count: int, chunk: int = 2048) -> None:
    """``count`` images: image k is ``base[k % B]`` (c = k // B) rolled by 13·c pixels in x, flipped if c is odd."""
    size = base.shape[1]
    buffer = np.empty((chunk, size, size), np.uint8)
    with open(path, "wb") as handle:
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            for i in range(n):
                copy, source = divmod(start + i, len(base))
                image = np.roll(base[source], (13 * copy) % size, axis=1)
                buffer[i] = image[:, ::-1] if copy % 2 else image
            handle.write(buffer[:n].data)
        handle.flush()


def build_store(root: Path, work: Path, min_images: int, image_size: int, demo_subjects: int) -> dict:
    """Write the store; returns its timings and shape."""
    started = time.perf_counter()
    base = demo_images(work, demo_subjects, image_size)
    demo_s = time.perf_counter() - started
    index, labels = mimic_like_tables(min_images, seed=0)
    tables_s = time.perf_counter() - started - demo_s
    shard = root / shard_dirname(1, 1)
    shard.mkdir(parents=True)
    write_images(shard / IMAGES_FILE, base, len(index))
    images_s = time.perf_counter() - started - demo_s - tables_s
    index.to_csv(shard / INDEX_FILE, index=False)
    labels.to_csv(shard / LABELS_FILE, index=False)
    pd.DataFrame({c: pd.Series(dtype=str) for c in SKIPPED_COLUMNS}).to_csv(shard / SKIPPED_FILE, index=False)
    write_json(shard / DONE_FILE, {
        "format": STORE_FORMAT, "image_size": image_size, "shard": 1, "num_shards": 1, "dataset": "mimic",
        "label_names": list(CHEXPERT_LABELS), "images": len(index), "skipped": 0,
        "studies": int(index["study_id"].nunique()), "labelled_studies": len(labels), "source_format": "jpg",
        "split_source": "bench_scale.py: tiled demo images, MIMIC-like split by subject",
    })
    written_s = time.perf_counter() - started
    fd = os.open(shard / IMAGES_FILE, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    synced_s = time.perf_counter() - started
    per_split = index.groupby("split").agg(images=("image_id", "size"), studies=("study_id", "nunique"),
                                           subjects=("subject_id", "nunique"))
    return {
        "images": len(index), "studies": int(index["study_id"].nunique()),
        "subjects": int(index["subject_id"].nunique()), "image_size": image_size,
        "images_per_study": round(len(index) / index["study_id"].nunique(), 3),
        "studies_per_subject": round(index["study_id"].nunique() / index["subject_id"].nunique(), 3),
        "per_split": {s: {k: int(v) for k, v in row.items()} for s, row in per_split.iterrows()},
        "images_u8_gib": round((shard / IMAGES_FILE).stat().st_size / 2**30, 2),
        "distinct_demo_images_tiled": len(base), "demo_subjects": demo_subjects,
        "seconds": {"synth_and_preprocess_demo": round(demo_s, 1), "tables": round(tables_s, 1),
                    "images_u8_write": round(images_s, 1), "all_files_written": round(written_s, 1),
                    "including_fsync": round(synced_s, 1)},
        "write_gb_per_s_until_fsync": round(len(index) * image_size**2 / 1e9 / (synced_s - demo_s - tables_s), 2),
    }


# --------------------------------------------------------------------------------------------- loader


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the OS page cache (``fincore``), or None without it."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def evict(path: Path, store: rd.Store) -> int | None:
    """Drop ``path`` from the page cache (clean pages, not mapped by this process); returns what stayed."""
    store.images.release_pages()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_bytes(path)


def cpu_seconds() -> tuple[float, float]:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def training_loader(dataset, plan, first_step: int, workers: int):
    """The training loader as ``pretrain`` builds it (uint8 batches, persistent workers): ``(loader, start_epoch)``."""
    loader, sampler = loop.training_loader(dataset, workers, torch.device("cpu"))
    return loader, lambda: sampler.start(plan, first_step)


def process_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the live processes ``pids`` (those that ended count 0 here)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def worker_pids(iterator) -> list[int]:
    return [worker.pid for worker in getattr(iterator, "_workers", [])]


def time_pass(dataset, loader, start_epoch) -> dict:
    """One pass over the epoch's batches; worker CPU = reaped children + live workers' /proc counters."""
    start_epoch()
    live_before = worker_pids(getattr(loader, "_iterator", None))  # persistent workers of an earlier pass
    main0, children0 = cpu_seconds()
    workers0 = process_cpu_seconds(live_before)
    started = time.perf_counter()
    iterator = iter(loader)
    pids = worker_pids(iterator)
    images, first_at, first_images, batches = 0, None, 0, 0
    for batch in iterator:
        n = batch["images"].shape[0]
        if first_at is None:
            first_at, first_images = time.perf_counter(), n
        images += n
        batches += 1
    ended = time.perf_counter()
    main1, children1 = cpu_seconds()
    main_cpu = main1 - main0
    workers_cpu = children1 - children0 + process_cpu_seconds(pids) - workers0
    seconds = ended - started
    steady = (images - first_images) / (ended - first_at) if ended > first_at else float("nan")
    return {
        "batches": batches, "images": images, "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds), "images_per_s_after_first_batch": round(steady),
        "first_batch_s": round(first_at - started, 2),
        "cpu_s_main": round(main_cpu, 2), "cpu_s_workers": round(workers_cpu, 2),
        "images_per_cpu_s": round(images / (main_cpu + workers_cpu)),
        "mb_read_per_s": round(images * dataset.images.image_size**2 / 1e6 / seconds),
        "batch_dtype": str(batch["images"].dtype).replace("torch.", ""),
    }


def close(loader) -> None:
    """Stop a loader's workers now (persistent ones outlive the pass), so that they unmap the store."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def batch_handoff(dataset, batch_size: int, repeats: int = 20) -> dict:
    """CPU per batch of what a loader worker does: the float collate alone (as with num_workers=0), the same plus
    moving the batch into a fresh shared-memory segment (what handing it to the main process costs), and a uint8
    batch handed over instead (the float conversion left to the GPU)."""
    from raddiffusion.data.studies import to_unit_range

    items = [dataset[i] for i in range(batch_size)]
    studies, count = [item["images"] for item in items], sum(len(item["images"]) for item in items)

    def uint8_shared() -> torch.Tensor:
        out = torch.empty((count, 1, *studies[0].shape[1:]), dtype=torch.uint8)
        start = 0
        for pixels in studies:
            out[start : start + len(pixels), 0] = torch.from_numpy(np.ascontiguousarray(pixels))
            start += len(pixels)
        return out.share_memory_()

    cases = {"float_collate": lambda: to_unit_range(studies, count),
             "float_collate_then_shared_memory": lambda: to_unit_range(studies, count).share_memory_(),
             "uint8_batch_then_shared_memory": uint8_shared}
    result = {"images_per_batch": count}
    for name, make in cases.items():
        make()
        before = time.process_time()
        for _ in range(repeats):
            make()
        result[f"{name}_images_per_cpu_s"] = round(count * repeats / (time.process_time() - before))
    return result


def loader_benchmark(store: rd.Store, batch_size: int, batches: int, workers_list: list[int]) -> dict:
    from raddiffusion.train.batches import EpochPlan

    path = store.images.files[0]
    started = time.perf_counter()
    dataset = rd.StudyDataset(store, split="train")
    dataset_s = time.perf_counter() - started
    plan = EpochPlan(dataset.view_counts(), batch_size, 1, 0, 1, seed=0, epoch=0)
    first_step = max(0, plan.steps - batches)
    runs = []
    for workers in workers_list:
        left = evict(path, store)
        loader, start_epoch = training_loader(dataset, plan, first_step, workers)
        cold = time_pass(dataset, loader, start_epoch)
        warm = time_pass(dataset, loader, start_epoch)  # the same batches: their pages are now cached
        close(loader)
        del loader
        runs.append({"workers": workers, "cold": {"resident_before_mib": None if left is None else round(left / MIB),
                                                  **cold}, "warm": warm})
    return {
        "loader_api": LOADER_API,
        "what": f"the training loader over StudyDataset(split='train'), EpochPlan(batch {batch_size} studies), the "
                f"last "
                f"{plan.steps - first_step} batches of epoch 0; cold = store pages evicted from the page cache first "
                "(posix_fadvise DONTNEED; the hypervisor's own cache, if any, may still serve reads), warm = the "
                "same batches again",
        "train_studies": len(dataset), "train_images": dataset.num_images(), "steps_per_epoch": plan.steps,
        "study_dataset_build_s": round(dataset_s, 2), "torch_threads_main": torch.get_num_threads(),
        "runs": runs, "batch_handoff_diagnostic_warm": batch_handoff(dataset, batch_size),
    }


# ------------------------------------------------------------------------------------- embed and probe


def run_child(*args: str) -> dict:
    """This script in a fresh process (its own peak RSS); returns the JSON it prints."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent)
    if done.returncode:
        raise RuntimeError(f"child {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_mib() -> dict:
    """This process's resident memory now and its peak (VmRSS, VmHWM: unlike ru_maxrss, not inherited)."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, kib = line.split()[:2]
                values[name[:-1]] = round(int(kib) / 1024)
    return {"rss_mib": values.get("VmRSS"), "peak_rss_mib": values.get("VmHWM")}


def child_embed(store_path: str, studies: str, batch_size: str, out_dir: str) -> dict:
    from raddiffusion.inference.embed import embed_store

    torch.manual_seed(0)
    model = rd.create("xs", "vanilla")
    store = rd.open_store(store_path)
    study = store.index["study_id"].to_numpy()
    ends = np.flatnonzero(np.r_[study[1:] != study[:-1], True])
    prefix = int(ends[min(int(studies), len(ends)) - 1]) + 1  # images of the first `studies` studies
    subset = dataclasses.replace(store, index=store.index.iloc[:prefix])  # rows 0..prefix-1 = images 0..prefix-1
    with open(store.images.files[0], "rb") as handle:  # warm: the prefix into the page cache, not into this process
        for _ in range(0, prefix * store.image_size**2, 16 * MIB):
            handle.read(16 * MIB)
    before = memory_mib()["rss_mib"]
    cpu0 = time.process_time()
    summary = embed_store(model, subset, Path(out_dir) / "vectors.npz", split=None, batch_size=int(batch_size),
                          progress=False)
    cpu = time.process_time() - cpu0
    vectors = np.load(Path(out_dir) / "vectors.npz")["embedding"]
    spectrum = np.linalg.svd(vectors - vectors.mean(0), compute_uv=False) ** 2
    return {
        "what": "embed_store, xs preset, random init, fp32, CPU, all splits of a prefix of the store, .npz output, "
                "warm page cache",
        "studies": summary.studies, "images": summary.images, "seconds": round(summary.seconds, 1),
        "studies_per_s": round(summary.studies / summary.seconds, 1),
        "images_per_s": round(summary.images / summary.seconds, 1), "cpu_s": round(cpu, 1),
        "images_per_cpu_s": round(summary.images / cpu, 1), "batch_studies": int(batch_size),
        "torch_threads": torch.get_num_threads(),
        "extrapolated_100k_studies_s": round(100_000 * summary.seconds / summary.studies),
        "extrapolated_100k_studies_note": "measured on a prefix only: 100,000 studies would take this long here",
        "rss_before_embedding_mib": before,
        "peak_rss_mib": memory_mib()["peak_rss_mib"],
        "vector_variance_in_top_10_of_256_directions": round(float(spectrum[:10].sum() / spectrum.sum()), 3),
    }


def probe_data(studies: int, width: int, rng: np.random.Generator, signal: np.ndarray,
               mixing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic study vectors, MIMIC-like labels ("ones" policy) and their mask.

    Vectors: correlated Gaussian noise (variance 1/i along the i-th of ``width`` rotated directions, scaled to a
    mean variance of 1 per coordinate) plus ``targets @ signal``.
    """
    raw = np.full((studies, len(CHEXPERT_LABELS)), np.nan, np.float32)
    for k, name in enumerate(CHEXPERT_LABELS):
        positive, negative, uncertain = LABEL_RATES[name]
        draw = rng.random(studies)
        raw[draw < positive + negative + uncertain, k] = -1.0
        raw[draw < positive + negative, k] = 0.0
        raw[draw < positive, k] = 1.0
    targets, mask = apply_label_policy(raw, "ones")
    vectors = rng.standard_normal((studies, width), dtype=np.float32) @ mixing
    vectors += targets @ signal
    return vectors, targets, mask


def probe_model(width: int) -> tuple[np.ndarray, np.ndarray]:
    """The label directions (one unit vector per label: an AUROC near 0.75 alone) and the noise's mixing matrix."""
    rng = np.random.default_rng(width)
    scales = 1 / np.arange(1, width + 1)
    scales *= width / scales.sum()
    rotation, _ = np.linalg.qr(rng.standard_normal((width, width)))
    mixing = (np.sqrt(scales)[:, None] * rotation.T).astype(np.float32)
    signal = rng.standard_normal((len(CHEXPERT_LABELS), width))
    signal /= np.linalg.norm(signal, axis=1, keepdims=True)
    return signal.astype(np.float32), mixing


def child_probe(train: str, evaluate: str, width: str, metrics_studies: str) -> dict:
    """Both solvers of the linear probe on the same synthetic vectors, in one process: seconds, CPU seconds,
    iterations per label, and how far their per-label AUROCs on eval lie apart."""
    import tracemalloc

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from raddiffusion.results.metrics import label_metrics
    from raddiffusion.train import logistic
    from raddiffusion.train import probe as probe_module

    iterations = {"sklearn": [], "torch": []}

    class Counted(LogisticRegression):  # the reference solver's classifier, recording its L-BFGS iterations
        def fit(self, *args, **kwargs):
            fitted = super().fit(*args, **kwargs)
            iterations["sklearn"].append(int(fitted.n_iter_[0]))
            return fitted

    fit_logistic = probe_module.fit_logistic

    def counted_fit(*args, **kwargs):  # the batched solver, recording each label's iterations
        fitted = fit_logistic(*args, **kwargs)
        iterations["torch"] = fitted.iterations.tolist()
        return fitted

    probe_module.LogisticRegression, probe_module.fit_logistic = Counted, counted_fit
    rng = np.random.default_rng(0)
    signal, mixing = probe_model(int(width))
    train_x, train_y, train_mask = probe_data(int(train), int(width), rng, signal, mixing)
    eval_x, eval_y, eval_mask = probe_data(int(evaluate), int(width), rng, signal, mixing)
    inputs = sum(a.nbytes for a in (train_x, train_y, train_mask, eval_x, eval_y, eval_mask))
    result = {"train_studies": int(train), "eval_studies": int(evaluate), "width": int(width),
              "labels": len(CHEXPERT_LABELS), "threads": torch.get_num_threads(), "input_arrays_mib": round(inputs / MIB),
              "solvers": {}}
    aurocs, probabilities = {}, {}
    for solver in ("sklearn", "torch"):
        before = memory_mib()["rss_mib"]
        tracemalloc.start()
        started, cpu0 = time.perf_counter(), time.process_time()
        probabilities[solver], absent = probe_module.linear_probe_scores(
            train_x, train_y, train_mask, eval_x, CHEXPERT_LABELS, seed=0, solver=solver)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        aurocs[solver] = [roc_auc_score(eval_y[eval_mask[:, k] > 0, k], probabilities[solver][eval_mask[:, k] > 0, k])
                          for k in range(len(CHEXPERT_LABELS))]
        result["solvers"][solver] = {
            "linear_probe_scores_s": round(seconds, 2), "cpu_s": round(cpu, 2),
            "iterations_per_label": iterations[solver], "labels_fitted": len(CHEXPERT_LABELS) - len(absent),
            "mean_auroc": round(float(np.mean(aurocs[solver])), 4),
            "tracemalloc_peak_mib": round(peak / MIB), "rss_before_mib": before,
        }
    result["max_iter"] = {"sklearn": probe_module.MAX_ITER, "torch": logistic.MAX_ITER}
    result["speedup_torch_over_sklearn"] = round(result["solvers"]["sklearn"]["linear_probe_scores_s"]
                                                 / result["solvers"]["torch"]["linear_probe_scores_s"], 1)
    result["max_abs_auroc_difference"] = round(float(np.max(np.abs(np.subtract(aurocs["torch"], aurocs["sklearn"])))), 5)
    result["max_abs_probability_difference"] = round(float(np.abs(probabilities["torch"]
                                                                  - probabilities["sklearn"]).max()), 4)
    result["peak_rss_mib"] = memory_mib()["peak_rss_mib"]
    n = min(int(metrics_studies), len(eval_x))
    if n == 0:
        return result
    subjects = np.sort(rng.integers(0, max(1, int(n / (MIMIC_SPLIT["validate"][1] / MIMIC_SPLIT["validate"][2]))), n))
    started = time.perf_counter()
    metrics = label_metrics(probabilities["torch"][:n], eval_y[:n], eval_mask[:n], absent=absent, subjects=subjects,
                            labels=CHEXPERT_LABELS)
    metrics_s = time.perf_counter() - started
    return {
        **result,
        "bootstrap_metrics": {"studies": n, "subjects": int(np.unique(subjects).size), "resamples": 1000,
                              "seconds": round(metrics_s, 1), "mean_auroc": round(metrics["mean"]["auroc"], 3)},
    }


# ------------------------------------------------------------------------------------------ projection


def _probe_run(probes: list[dict], train: int, width: int, threads: int) -> dict | None:
    return next((p for p in probes if (p["train_studies"], p["width"], p["threads"]) == (train, width, threads)), None)


def regression_seconds(probes: list[dict], solver: str, width: int, threads: int, studies: int) -> dict:
    """A solver's seconds for the 14 regressions at ``studies`` train studies: measured at the largest train size
    (CPU seconds for sklearn on one thread, as the probe ran; wall seconds for torch with ``threads`` threads), scaled
    linearly in studies (the exponent measured against the smaller size is reported beside it)."""
    sizes = sorted({p["train_studies"] for p in probes if p["width"] == width and p["threads"] == threads})
    big = _probe_run(probes, sizes[-1], width, threads)
    key = "cpu_s" if solver == "sklearn" else "linear_probe_scores_s"
    measured = big["solvers"][solver][key]
    exponent = None
    if len(sizes) > 1:
        small = _probe_run(probes, sizes[0], width, threads)["solvers"][solver][key]
        exponent = round(math.log(measured / small) / math.log(sizes[-1] / sizes[0]), 2) if small > 0 else None
    return {"seconds": measured * studies / sizes[-1], "measured_s": measured, "measured_at_train_studies": sizes[-1],
            "threads": threads, "exponent_in_studies_measured": exponent}


def projection(loader: dict, embed: dict, probes: list[dict]) -> dict:
    """MIMIC-CXR pretraining on 1 and 8 H200s from the cited GPU rates and the CPU rates measured here, with the
    probe as it was ("before": process 0 embeds every study, 14 scikit-learn fits one after another on one core) and
    as it is ("now": every rank embeds its share, the 14 fits at once in torch).

    CPU rates are taken per busy core (images or seconds per CPU-second of the process), not from the
    wall clock of this shared machine: the GPU host is assumed to give each worker a core of its own.
    The batched regressions are timed on this machine's CPU cores (no GPU here): a GPU host fits them on its GPU.
    """
    warm = {run["workers"]: run["warm"] for run in loader["runs"]}
    cold = {run["workers"]: run["cold"] for run in loader["runs"]}
    with_workers = [w for w in warm if w > 0]
    per_worker = min(warm[w]["images"] / warm[w]["cpu_s_workers"] for w in with_workers) if with_workers else None
    main_per_cpu_s = min(warm[w]["images"] / warm[w]["cpu_s_main"] for w in with_workers) if with_workers else None
    batch_bytes = 1 if warm[min(warm)]["batch_dtype"] == "uint8" else 4
    cold_mb_s = max(run["mb_read_per_s"] for run in cold.values())
    all_threads = max(p["threads"] for p in probes)
    train_studies = MIMIC_SPLIT["train"][1]
    regressions = {
        "before": {preset: regression_seconds(probes, "sklearn", width, 1, train_studies)
                   for preset, width in WIDTH.items()},
        "now": {preset: regression_seconds(probes, "torch", width, all_threads, train_studies)
                for preset, width in WIDTH.items()},
    }
    metrics_s = min(p["bootstrap_metrics"]["seconds"] for p in probes if "bootstrap_metrics" in p)
    train_images = MIMIC_SPLIT["train"][0]
    probe_images = MIMIC_SPLIT["train"][0] + MIMIC_SPLIT["validate"][0]  # every study labelled (MIMIC: all but 8)
    probes_count = 1 + EPOCHS // PROBE_EVERY
    loader_rate = per_worker * DEFAULT_LOADER_WORKERS if per_worker else None  # one rank's probe loader, images/s
    cases = []
    for case, rate in H200_TRAINING_IMAGES_PER_S.items():
        preset = case.split()[0]
        embed_gpu = EMBED_OVER_TRAINING * rate
        workers_per_gpu = math.ceil(rate / per_worker) if per_worker else None
        rows = {}
        for gpus in (1, 8):
            efficiency = 1.0 if gpus == 1 else SCALING_EFFICIENCY_8
            total_rate = rate * gpus * efficiency
            train_s = EPOCHS * train_images / total_rate
            row = {"training_images_per_s": round(total_rate), "training_h": round(train_s / 3600, 2)}
            for variant, embedding_ranks in (("before", 1), ("now", gpus)):
                images = probe_images / embedding_ranks  # what each embedding rank embeds
                embed_s = max(images / embed_gpu, images / loader_rate if loader_rate else 0.0)
                per_probe = embed_s + regressions[variant][preset]["seconds"] + metrics_s
                probes_s = probes_count * per_probe
                row[variant] = {
                    "per_probe_s": round(per_probe, 1), "embed_s": round(embed_s, 1),
                    "regressions_s": round(regressions[variant][preset]["seconds"], 1),
                    "probes_h": round(probes_s / 3600, 2), "total_h": round((train_s + probes_s) / 3600, 2),
                    "probe_share_of_wall_time": round(probes_s / (train_s + probes_s), 3),
                }
            row.update({
                "loader_worker_cores_needed": workers_per_gpu * gpus if workers_per_gpu else None,
                "main_process_cores_for_batches": round(total_rate / main_per_cpu_s, 2) if main_per_cpu_s else None,
                "store_read_gb_per_s_if_not_in_page_cache": round(total_rate * 256**2 / 1e9, 2),
            })
            rows[f"{gpus}_gpu"] = row
        cases.append({
            "case": case, "preset": preset, "h200_training_images_per_s": rate,
            "gpu_embed_images_per_s_assumed": round(embed_gpu), "loader_workers_per_gpu": workers_per_gpu,
            **rows,
            "speedup_8_over_1_gpu": {variant: round(rows["1_gpu"][variant]["total_h"] / rows["8_gpu"][variant]["total_h"],
                                                    2) for variant in ("before", "now")},
            "ideal_speedup": round(8 * SCALING_EFFICIENCY_8, 1),
        })
    return {
        "dataset": {"mimic_cxr_images": MIMIC_IMAGES, "studies": MIMIC_STUDIES, "subjects": MIMIC_SUBJECTS,
                    "official_split_images_studies_subjects": MIMIC_SPLIT,
                    "store_gib_at_256": round(MIMIC_IMAGES * 256**2 / 2**30, 1),
                    "source": "totals: ../shared/SPEC.md and ../shared/DATASETS.md; split: mimic-cxr-2.0.0-split.csv "
                              "as published (its three rows sum to the totals)"},
        "schedule": {"epochs": EPOCHS, "probe_every": PROBE_EVERY, "probes": probes_count,
                     "probe_embeds_images": probe_images,
                     "note": "pretrain probes after epoch 0 and every 10 epochs (the 200th included); each embeds the "
                             "labelled train and validate studies once. before: process 0 alone, while the other ranks "
                             "wait; now: every rank its share (pretrain._probe, probe.study_vectors)"},
        "inputs": {
            "h200_training_images_per_s": {**H200_TRAINING_IMAGES_PER_S, "source": "BENCHMARKS.md, 'Models on a GPU "
                                           "(H200)', bench_models.py --device cuda --bf16 --studies 128, 2026-11-26"},
            "loader_images_per_worker_core_s_warm": round(per_worker) if per_worker else None,
            "loader_main_process_images_per_core_s_with_workers": round(main_per_cpu_s) if main_per_cpu_s else None,
            "loader_num_workers_0_images_per_core_s_warm": round(warm[0]["images"] / warm[0]["cpu_s_main"])
            if 0 in warm else None,
            "loader_cold_mb_per_s_best_wall": cold_mb_s,
            "cpu_embed_xs_images_per_core_s": embed["images_per_cpu_s"],
            "regressions_at_mimic_train": {variant: {preset: {k: round(v, 2) if isinstance(v, float) else v
                                                              for k, v in r.items()} for preset, r in by.items()}
                                           for variant, by in regressions.items()},
            "bootstrap_metrics_s": metrics_s,
        },
        "assumptions": [
            f"8 GPUs train at 8 × {SCALING_EFFICIENCY_8:.0%} of one GPU's images/s "
            "(DDP; batch 512 studies = 64 per rank)",
            f"GPU embedding = {EMBED_OVER_TRAINING:g} × that case's training images/s (forward only; study_vectors "
            "runs without autocast and the encoder sees all patches, so possibly optimistic)",
            f"each embedding rank loads through the run's {DEFAULT_LOADER_WORKERS} loader workers (uint8 batches) at "
            "the warm images per worker core-second measured here, overlapped with the GPU: embed = the slower of "
            "the two",
            "regressions before: 14 scikit-learn fits one after another, their CPU seconds on one core measured here "
            f"at {regressions['before']['xs']['measured_at_train_studies']:,} train studies, scaled linearly to "
            f"{train_studies:,}; now: the batched torch fit, its wall seconds on this machine's {all_threads} CPU "
            "cores, scaled the same way (a GPU host fits on the GPU: this is the pessimistic side). The vectors "
            "are synthetic (correlated, one direction per label): real embeddings may need more or fewer iterations",
            "the bootstrap metrics of the validate predictions: the seconds measured here on a MIMIC-validate-sized "
            "split, in the main process",
            "loader workers per GPU = training images/s ÷ warm images per worker CPU-second measured here (the H200 "
            f"host's cores as fast as these, one core per worker); the pin-memory copy and host-to-GPU transfer of "
            f"{warm[min(warm)]['batch_dtype']} batches ({batch_bytes * 64} KiB per image at 256²) are not measured",
            "checkpoints, figures every epoch and worker start-up are left out",
        ],
        "cases": cases,
    }


def findings(result: dict) -> list[str]:
    p = result["projection"]
    by = {c["case"]: c for c in p["cases"]}
    xs, b = by["xs vanilla bf16"], by["b vanilla bf16"]
    inputs = p["inputs"]
    handoff = result["loader"]["batch_handoff_diagnostic_warm"]
    lines = [
        f"Probe solvers on the same vectors, {run['train_studies']:,} x {run['width']}-d, {run['threads']} thread(s): "
        f"sklearn {run['solvers']['sklearn']['linear_probe_scores_s']} s, torch "
        f"{run['solvers']['torch']['linear_probe_scores_s']} s (x{run['speedup_torch_over_sklearn']}); largest "
        f"per-label AUROC difference {run['max_abs_auroc_difference']}"
        for run in result["probe"]
    ]
    shares = []
    for name, case in (("b", b), ("xs", xs)):
        before, now = case["8_gpu"]["before"], case["8_gpu"]["now"]
        shares.append(f"{name}: probes {before['probe_share_of_wall_time']:.0%} -> {now['probe_share_of_wall_time']:.0%} "
                      f"of the 8-GPU wall time ({before['per_probe_s']:,} s -> {now['per_probe_s']:,} s per probe), "
                      f"8 GPUs x{case['speedup_8_over_1_gpu']['before']} -> x{case['speedup_8_over_1_gpu']['now']} "
                      f"(ideal x{case['ideal_speedup']})")
    lines.append("Projection of MIMIC-CXR pretraining (21 probes): " + "; ".join(shares) + ".")
    lines += [
        f"Next: the loader at xs rates ({result['loader']['loader_api']}). "
        f"{inputs['loader_images_per_worker_core_s_warm']:,} images per worker core-second (warm) against "
        f"{inputs['loader_num_workers_0_images_per_core_s_warm']:,} in the main process (num_workers=0): handing a "
        f"batch to the main process through fresh shared memory costs a worker more than making it (float32 "
        f"collate alone {handoff['float_collate_images_per_cpu_s']:,} images/CPU-s, then moved to shared memory "
        f"{handoff['float_collate_then_shared_memory_images_per_cpu_s']:,}; a uint8 batch moved "
        f"{handoff['uint8_batch_then_shared_memory_images_per_cpu_s']:,}). b ({b['h200_training_images_per_s']:,} "
        f"images/s/GPU) needs {b['loader_workers_per_gpu']} worker per GPU; xs ({xs['h200_training_images_per_s']:,}) "
        f"needs {xs['loader_workers_per_gpu']} per GPU = {xs['8_gpu']['loader_worker_cores_needed']} worker cores on "
        f"8 GPUs, and each rank's main process spends {xs['1_gpu']['main_process_cores_for_batches']} of a core just "
        "receiving batches (before pinning and the training loop).",
        f"Cold store: {inputs['loader_cold_mb_per_s_best_wall']} MB/s read here at best; 8 GPUs need "
        f"{b['8_gpu']['store_read_gb_per_s_if_not_in_page_cache']} GB/s (b) and "
        f"{xs['8_gpu']['store_read_gb_per_s_if_not_in_page_cache']} GB/s (xs) unless the "
        f"{p['dataset']['store_gib_at_256']} GiB store stays in the page cache (after the first epoch on a node "
        "with the RAM for it).",
    ]
    return lines


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="at least this many images in the store")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--demo-subjects", type=int, default=30, help="demo subjects whose images are tiled")
    parser.add_argument("--loader-batches", type=int, default=120)
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--batch-size", type=int, default=64, help="studies per loader batch")
    parser.add_argument("--embed-studies", type=int, default=2000)
    parser.add_argument("--probe-train", type=int, default=100_000)
    parser.add_argument("--probe-eval", type=int, default=100_000)
    parser.add_argument("--probe-small", type=int, default=25_000, help="train studies of the 256-d/768-d pair")
    parser.add_argument("--work", type=Path, default=REPO / "out", help="a temporary folder is made (and removed) here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the store)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads of each measuring process (default 1: rates per core)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, threads, *rest = args.child
        torch.set_num_threads(int(threads))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=int(threads)):  # BLAS (NumPy, scikit-learn) too
            print(json.dumps({"embed": child_embed, "probe": child_probe}[stage](*rest)))
        return
    torch.set_num_threads(args.threads)

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.work))
    started, load_before = time.perf_counter(), os.getloadavg()
    try:
        root = work / "store"
        result = {"benchmark": "scale: tiled 100k-image store, training loader, embed, linear probe; projection of "
                               "MIMIC-CXR pretraining onto 1 and 8 H200 GPUs"}
        result["store"] = build_store(root, work, args.images, args.image_size, args.demo_subjects)
        opened = time.perf_counter()
        store = rd.open_store(root)
        result["store"]["open_store_s"] = round(time.perf_counter() - opened, 2)
        result["store"]["summary"] = store.summary()
        workers = [int(w) for w in args.workers.split(",")]
        result["loader"] = loader_benchmark(store, args.batch_size, args.loader_batches, workers)
        del store
        threads, validate = str(args.threads), str(MIMIC_SPLIT["validate"][1])
        result["embed"] = run_child("embed", threads, str(root), str(args.embed_studies), str(args.batch_size),
                                    str(work))
        if not args.keep:
            shutil.rmtree(root)  # the probe does not need the store: free the disk early
        result["probe"] = [  # per core (--threads) and on every core of this machine
            run_child("probe", str(count), str(train), str(evaluate), str(width), metrics)
            for count in sorted({args.threads, available_cpus()})
            for train, evaluate, metrics in ((args.probe_train, args.probe_eval, validate),
                                             (args.probe_small, validate, "0"))
            for width in WIDTH.values()
        ]
        result["projection"] = projection(result["loader"], result["embed"], result["probe"])
        result["findings"] = findings(result)
        result["wall_s"] = round(time.perf_counter() - started)
        result["load_average_1_5_15_min"] = {"start": [round(x, 2) for x in load_before],
                                             "end": [round(x, 2) for x in os.getloadavg()]}
        result.update(describe_machine())
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
