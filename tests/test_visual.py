"""Figures: reconstruction PNG, diffusion GIF, CLS attention maps and figure, probe curves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import raddiffusion
from raddiffusion.models import StudyClassifier
from raddiffusion.models.bottleneck import check_batch
from raddiffusion.models.vit import merge_heads, patchify, split_heads
from raddiffusion.visual import (
    attention_figure,
    attention_note,
    attention_rollout,
    cls_attention,
    diffusion_animation,
    encoder_attention,
    label_bars_figure,
    mask_image,
    probe_curves_figure,
    read_probe_history,
    reconstruction_figure,
    run_label,
)
from raddiffusion.visual.attention import attention_probabilities

IMAGE, PATCH = 64, 16
GRID = IMAGE // PATCH
TINY = {"image_size": IMAGE, "patch_size": PATCH, "width": 32, "depth": 2, "heads": 2, "mlp_hidden": 64,
        "decoder_width": 16, "decoder_depth": 2, "decoder_heads": 2, "decoder_mlp_hidden": 32}
DDIM_STEPS = 9  # 10 frames: the noise and one per step


@pytest.fixture(scope="module")
def diffusion_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return raddiffusion.create("xs", "diffusion", **TINY).eval()


@pytest.fixture(scope="module")
def study() -> tuple[torch.Tensor, list[int]]:
    """Two studies: two views, then one view; random pixels in [-1, 1]."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 1, IMAGE, IMAGE, generator=generator) * 2 - 1, [2, 1]


@pytest.fixture(scope="module")
def reconstructed(diffusion_model, study) -> dict:
    images, _ = study
    with torch.no_grad():
        return diffusion_model.reconstruct(images[:2], [2], mask_seed=3, seed=4, steps=DDIM_STEPS)


def test_mask_image_marks_exactly_the_masked_patches():
    mask = torch.zeros(GRID * GRID, dtype=torch.bool)
    mask[1] = True  # row 0, column 1
    mask[GRID + 3] = True  # row 1, column 3
    image = mask_image(mask, PATCH, IMAGE, IMAGE)
    assert image.shape == (IMAGE, IMAGE) and image.dtype == bool
    assert image.sum() == 2 * PATCH * PATCH
    assert image[:PATCH, PATCH:2 * PATCH].all() and image[PATCH:2 * PATCH, 3 * PATCH:].all()
    assert not image[:PATCH, :PATCH].any()


def test_reconstruction_figure_is_a_png_with_one_row_per_view(tmp_path, study, reconstructed):
    images = study[0][:2]
    path = reconstruction_figure(images, reconstructed, PATCH, tmp_path / "rec.png", "epoch 1", "pixel space")
    one_view = reconstruction_figure(images[:1], {k: v[:1] for k, v in reconstructed.items() if k != "frames"},
                                     PATCH, tmp_path / "rec1.png", "epoch 1", "pixel space")
    with Image.open(path) as two, Image.open(one_view) as one:
        assert two.format == one.format == "PNG"
        assert two.width == one.width and two.height > one.height  # a row per view
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_reconstruction_figure_rejects_a_mask_of_the_wrong_size(tmp_path, study, reconstructed):
    bad = {"reconstruction": reconstructed["reconstruction"], "mask": reconstructed["mask"][:, 1:]}
    with pytest.raises(ValueError, match="mask"):
        reconstruction_figure(study[0][:2], bad, PATCH, tmp_path / "rec.png", "t", "n")
    assert not (tmp_path / "rec.png").exists()


@pytest.mark.parametrize("every", [1, 2, 4])
def test_gif_holds_every_kth_frame_with_first_and_last(tmp_path, reconstructed, every):
    frames = reconstructed["frames"]
    assert len(frames) == DDIM_STEPS + 1
    path = diffusion_animation(frames, reconstructed["mask"], PATCH, tmp_path / "a.gif", every=every, frame_ms=50)
    expected = sorted(set(range(0, len(frames), every)) | {len(frames) - 1})
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == len(expected)
        assert gif.size[0] > 2 * IMAGE and gif.size[1] > IMAGE  # two views side by side under a caption
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(gif)]
    assert durations[-1] > durations[0]  # the last frame is held longer


def test_gif_frames_show_the_images_on_the_fixed_grey_scale(tmp_path):
    """A constant −1 then +1 study: the view area of the first frame is black, of the last white."""
    mask = torch.zeros(1, GRID * GRID, dtype=torch.bool)
    frames = [torch.full((1, 1, IMAGE, IMAGE), -1.0), torch.zeros(1, 1, IMAGE, IMAGE), torch.ones(1, 1, IMAGE, IMAGE)]
    path = diffusion_animation(frames, mask, PATCH, tmp_path / "a.gif", every=5, step_numbers=[0, 50, 100])
    with Image.open(path) as gif:
        assert gif.n_frames == 2  # every=5 keeps frame 0, plus the last
        first = np.asarray(gif.convert("L"))
        gif.seek(1)
        last = np.asarray(gif.convert("L"))
    bottom = slice(first.shape[0] - IMAGE // 2, None)  # below the caption strip
    assert first[bottom].max() == 0 and last[bottom].min() == 255


def test_gif_rejects_step_numbers_of_the_wrong_length(tmp_path, reconstructed):
    with pytest.raises(ValueError, match="step numbers"):
        diffusion_animation(reconstructed["frames"], reconstructed["mask"], PATCH, tmp_path / "a.gif",
                            step_numbers=[1, 2])


def test_rerun_gives_the_encoders_own_tokens(diffusion_model, study):
    images, lengths = study
    tokens, layers = encoder_attention(diffusion_model, images, lengths)
    with torch.no_grad():
        expected = diffusion_model.encoder(patchify(images, PATCH), check_batch(images, lengths, IMAGE))
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)
    assert len(layers) == TINY["depth"] and layers[0].shape == (3, 1 + GRID * GRID, 1 + GRID * GRID)


def test_attention_probabilities_are_the_ones_the_block_uses(diffusion_model):
    """Probabilities · values through the output projection give the block's own attention output."""
    block = diffusion_model.encoder.blocks[0]
    x = torch.randn(2, 1 + GRID * GRID, TINY["width"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        probs = attention_probabilities(block, x)
        values = split_heads(block.attn.qkv(block.norm1(x))[..., 2 * TINY["width"]:], TINY["heads"])
        ours = block.attn.proj(merge_heads(probs @ values))
        torch.testing.assert_close(ours, block.attn(block.norm1(x)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["last", "rollout"])
def test_cls_attention_maps_are_per_image_patch_grids(diffusion_model, study, mode):
    images, lengths = study
    maps = cls_attention(diffusion_model, images, lengths, mode=mode)
    assert maps.shape == (3, GRID, GRID)
    assert (maps >= 0).all()
    sums = maps.sum(dim=(1, 2))
    assert (sums <= 1 + 1e-6).all() and (sums > 0).all()  # the CLS key takes the rest of the row


def test_last_is_the_last_blocks_cls_row_and_rollout_differs(diffusion_model, study):
    images, lengths = study
    _, layers = encoder_attention(diffusion_model, images, lengths)
    last = cls_attention(diffusion_model, images, lengths, mode="last")
    rollout = cls_attention(diffusion_model.encoder, images, lengths, mode="rollout")
    torch.testing.assert_close(last.flatten(1), layers[-1][:, 0, 1:])
    assert not torch.allclose(last, rollout, atol=1e-4)


def test_rollout_multiplies_later_layers_on_the_left():
    """Two tokens (CLS, one patch): all attend to the patch, then all to the CLS. By hand: 0.5."""
    to_patch = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    to_cls = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    joint = attention_rollout([to_patch, to_cls])
    torch.testing.assert_close(joint, torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))
    torch.testing.assert_close(attention_rollout([to_cls, to_patch])[0, 0, 1], torch.tensor(0.25))


def test_cls_attention_reads_the_encoder_of_any_model(diffusion_model, study):
    """A classifier holding the DiffMAE's encoder weights gives its maps; a vanilla MAE works too."""
    images, lengths = study
    classifier = StudyClassifier.from_pretrained(diffusion_model)
    torch.testing.assert_close(cls_attention(classifier, images, lengths), cls_attention(diffusion_model, images, lengths))
    mae = raddiffusion.create("xs", "vanilla", **TINY)
    assert cls_attention(mae, images, lengths, mode="last").shape == (3, GRID, GRID)


def test_cls_attention_rejects_a_model_without_a_study_encoder(study):
    with pytest.raises(TypeError, match="StudyEncoder"):
        cls_attention(torch.nn.Linear(2, 2), study[0], study[1])
    with pytest.raises(ValueError, match="mode"):
        cls_attention(torch.nn.Linear(2, 2), study[0], study[1], mode="mean")


def test_attention_figure_is_a_png_wider_with_more_views(tmp_path, diffusion_model, study):
    images, lengths = study
    maps = cls_attention(diffusion_model, images, lengths)
    note = attention_note("rollout", TINY["depth"])
    assert note == "attention rollout over 2 layers, mean over heads"
    three = attention_figure(images, maps, tmp_path / "att3.png", "attention", note)
    one = attention_figure(images[:1], maps[:1], tmp_path / "att1.png", "attention", note)
    with Image.open(three) as wide, Image.open(one) as narrow:
        assert wide.format == "PNG" and wide.width > narrow.width


def probe_record(epoch: int, auroc: float | None, auprc: float | None) -> dict:
    return {
        "epoch": epoch, "train_split": "train", "eval_split": "validate", "studies": 40,
        "labels": {
            "Cardiomegaly": {"auroc": auroc, "auprc": auprc, "f1": 0.4, "positives": 5, "negatives": 35},
            "Fracture": {"absent": "no positive study", "positives": 0, "negatives": 40},
        },
        "mean": {"auroc": auroc, "auprc": auprc, "f1": 0.4, "labels": 1},
    }


def write_run(root: Path, name: str, scheme: str | None, records: list[dict]) -> Path:
    run = root / name
    (run / "probe").mkdir(parents=True)
    for record in records:
        (run / "probe" / f"epoch_{record['epoch']:03d}.json").write_text(json.dumps(record))
    if scheme is not None:
        (run / "config.json").write_text(json.dumps({"model": {"scheme": scheme, "preset": "xs"}}))
    return run


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    vanilla = write_run(tmp_path, "mae", "vanilla", [probe_record(e, 0.5 + e / 1000, 0.2) for e in (20, 10, 0)])
    diffusion = write_run(tmp_path, "diff", None, [probe_record(e, 0.6, None) for e in (0, 10)])
    return [vanilla, diffusion]


def test_probe_history_is_sorted_by_epoch_and_skips_corrupt_files(runs):
    (runs[0] / "probe" / "epoch_005.json").write_text("{not json")
    (runs[0] / "probe" / "epoch_006.json").write_text('{"mean": {}}')  # JSON, but no epoch
    (runs[0] / "probe" / "epoch_5.json").write_text(json.dumps(probe_record(5, 0.7, 0.3)))  # its name sorts last
    with pytest.warns(UserWarning) as caught:
        history = read_probe_history(runs[0])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "epoch_005.json" in messages[0] and "epoch_006.json" in messages[1]
    assert [record["epoch"] for record in history] == [0, 5, 10, 20]
    assert read_probe_history(runs[0].parent / "nowhere") == []


def test_run_label_reads_the_scheme_and_falls_back_to_the_name(runs):
    assert run_label(runs[0]) == "mae (vanilla)"
    assert run_label(runs[1]) == "diff"
    (runs[1] / "config.json").write_text('["not", "a", "config"]')
    assert run_label(runs[1]) == "diff"
    named = runs[0].parent / "vanilla"
    named.mkdir()
    (named / "config.json").write_text((runs[0] / "config.json").read_text())
    assert run_label(named) == "vanilla"  # not "vanilla (vanilla)"


def test_probe_curves_and_label_bars_are_pngs(tmp_path, runs):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    curves = probe_curves_figure([*runs, empty], tmp_path / "fig" / "curves.png", labels=["a", "b", "c"])
    bars = label_bars_figure(runs, tmp_path / "fig" / "bars.png")
    for path in (curves, bars):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 0
    with Image.open(curves) as image:
        assert image.width > image.height  # two panels side by side


def test_probe_curves_without_probe_files_is_a_value_error(tmp_path):
    (tmp_path / "run" / "probe").mkdir(parents=True)
    with pytest.raises(ValueError, match="no probe results"):
        probe_curves_figure([tmp_path / "run"], tmp_path / "curves.png")
    with pytest.raises(ValueError, match="no probe results"):
        label_bars_figure([tmp_path / "run"], tmp_path / "bars.png")
    assert not (tmp_path / "curves.png").exists()
