"""The study dataset and collate: whole studies, view selection, labels, workers and DDP sampling."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import raddiffusion as rd
from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.preprocess import available_cpus, preprocess
from raddiffusion.data.studies import loader_workers

SIZE = 16


@pytest.fixture
def store(small_tree, tmp_path):
    preprocess(small_tree.root, tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    return rd.open_store(tmp_path / "store")


def _views(store, ds, i):
    return list(store.index["view"].to_numpy()[ds.image_rows(i)])


def test_studies_of_a_split_with_frontal_first(store):
    ds = rd.StudyDataset(store, split="train")
    train_studies = store.index.loc[store.index.split == "train", "study_id"].unique()
    assert list(ds.study_ids) == list(train_studies)
    i = list(ds.study_ids).index(50000003)
    assert _views(store, ds, i) == ["PA", "LATERAL", "LL"]
    assert ds.num_images() == (store.index.split == "train").sum()
    assert len(rd.StudyDataset(store, split="validate")) == 2
    assert len(rd.StudyDataset(store, split=None)) == store.index.study_id.nunique()


def test_item_pixels_are_the_store_rows(store):
    ds = rd.StudyDataset(store, split="train")
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["images"], store.images[ds.image_rows(i)])


def test_max_views_and_frontal_only(store):
    capped = rd.StudyDataset(store, split="train", max_views=1)
    assert all(len(capped[i]["images"]) == 1 for i in range(len(capped)))
    assert all(_views(store, capped, i)[0] in ("PA", "AP") for i in range(len(capped)) if capped.study_ids[i] != 50000006)
    frontal = rd.StudyDataset(store, split="train", frontal_only=True)
    assert 50000006 not in frontal.study_ids  # a lateral-only study
    assert all(set(_views(store, frontal, i)) <= {"PA", "AP"} for i in range(len(frontal)))


def test_batch_layout_and_values(store):
    ds = rd.StudyDataset(store, split="train")
    batch = rd.collate_studies([ds[i] for i in range(len(ds))])
    lengths = [len(ds.image_rows(i)) for i in range(len(ds))]
    assert batch["images"].shape == (sum(lengths), 1, SIZE, SIZE) and batch["images"].dtype == torch.float32
    assert batch["lengths"].tolist() == lengths
    rows = np.concatenate([ds.image_rows(i) for i in range(len(ds))])
    expected = torch.from_numpy(store.images[rows]).float() / 127.5 - 1
    torch.testing.assert_close(batch["images"][:, 0], expected)
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert batch["labels"].shape == batch["label_mask"].shape == (len(ds), len(LABELS))
    assert batch["study_id"].tolist() == list(ds.study_ids)


def test_label_policies_and_unlabelled_studies(store):
    study = 50000001  # Cardiomegaly 1, Edema -1
    col = {name: k for k, name in enumerate(LABELS)}
    for policy, edema, edema_mask in (("ones", 1, 1), ("zeros", 0, 1), ("ignore", 0, 0)):
        ds = rd.StudyDataset(store, split="train", label_policy=policy)
        item = ds[list(ds.study_ids).index(study)]
        assert item["labels"][col["Cardiomegaly"]] == 1 and item["label_mask"][col["Cardiomegaly"]] == 1
        assert (item["labels"][col["Edema"]], item["label_mask"][col["Edema"]]) == (edema, edema_mask)
    ds = rd.StudyDataset(store, split="train")
    unlabelled = ds[list(ds.study_ids).index(50000005)]
    assert not unlabelled["label_mask"].any() and not unlabelled["labels"].any()
    labelled_only = rd.StudyDataset(store, split="train", labelled_only=True)
    assert 50000005 not in labelled_only.study_ids and len(labelled_only) == len(ds) - 1
    np.testing.assert_array_equal(labelled_only[0]["images"], ds[0]["images"])


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="split"):
        rd.StudyDataset(store, split="training")
    with pytest.raises(ValueError, match="max_views"):
        rd.StudyDataset(store, max_views=0)


def _batches(loader):
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_worker_processes_give_the_same_batches(store):
    ds = rd.StudyDataset(store, split=None)
    serial = _batches(DataLoader(ds, batch_size=3, collate_fn=rd.collate_studies))
    parallel = _batches(DataLoader(ds, batch_size=3, collate_fn=rd.collate_studies, num_workers=2))
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_image_array_pickles_without_its_pixels(store):
    blob = pickle.dumps(store.images)
    assert len(blob) < 2000
    np.testing.assert_array_equal(pickle.loads(blob)[[0, 3, -1]], store.images[[0, 3, -1]])


def test_distributed_sampler_splits_studies_between_ranks(store):
    ds = rd.StudyDataset(store, split=None)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=rd.collate_studies)
        seen.append([int(s) for batch in loader for s in batch["study_id"]])
    assert len(seen[0]) == len(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(ds.study_ids.tolist())


def test_uint8_batches_become_the_same_float_input_on_the_device(store):
    """Training batches cross to the device as uint8 and are converted there to exactly collate_studies' floats."""
    from raddiffusion.data.studies import collate_study_pixels
    from raddiffusion.train.batches import EpochPlan
    from raddiffusion.train.loop import to_device, training_loader

    ds = rd.StudyDataset(store, split=None)
    items = [ds[i] for i in range(len(ds))]
    pixels, floats = collate_study_pixels(items), rd.collate_studies(items)
    assert pixels["images"].dtype == torch.uint8 and pixels["images"].shape == floats["images"].shape
    moved = to_device(pixels, torch.device("cpu"))
    assert torch.equal(moved["images"], floats["images"])
    for key in ("lengths", "labels", "label_mask", "study_id"):
        assert torch.equal(moved[key], floats[key])

    loader, sampler = training_loader(ds, workers=2, device=torch.device("cpu"))
    for epoch in range(2):  # one loader, its workers kept, a new epoch's batches each time
        plan = EpochPlan(ds.view_counts(), batch_size=2, micro_batches_per_rank=1, rank=0, ranks=1, seed=0, epoch=epoch)
        sampler.start(plan, first_step=1)
        batches = list(loader)
        assert len(batches) == plan.steps - 1
        expected = [mb.studies.tolist() for step in range(1, plan.steps) for mb in plan.micro_batches(step)]
        assert [b["study_id"].tolist() for b in batches] == [list(ds.study_ids[e]) for e in expected]


def test_loaders_start_no_more_workers_than_the_cpus_they_may_use():
    cpus = available_cpus()
    assert loader_workers(cpus + 3) == cpus
    assert loader_workers(1) == 1 and loader_workers(0) == 0
