"""Weights in and out: MAE position layout, older checkpoints, init from MAE / Hugging Face / original weights, export.

Tests that need ``transformers`` (the ``interop`` extra) skip without it.
"""
from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import raddiffusion as rd
from raddiffusion.cli import main
from raddiffusion.data.preprocess import preprocess
from raddiffusion.models import StudyClassifier, from_config
from raddiffusion.models.bottleneck import check_batch
from raddiffusion.models.presets import PRESETS, saved_config
from raddiffusion.models.vit import patchify, random_masking, select_patches, sincos_2d
from raddiffusion.train.optim import build_optimizer
from raddiffusion.train.runs import load_checkpoint, save_checkpoint

PATCH, SIZE = 8, 32
GRID = SIZE // PATCH
TINY = {"image_size": SIZE, "patch_size": PATCH, "width": 32, "depth": 2, "heads": 2, "mlp_hidden": 64,
        "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, "decoder_mlp_hidden": 32}
TOKENS_TOLERANCE = 1e-4
ENCODER_TENSORS = 1 + 2 + TINY["depth"] * 12 + 2  # CLS, patch kernel + bias, 12 per block, final norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers", reason="the interop extra (pip install -e '.[interop]') is not installed")


def mae_position_table(width: int, rows: int, cols: int, cls_row: bool = False) -> np.ndarray:
    """The MAE recipe (get_2d_sincos_pos_embed), written here independently of the project's code."""
    def one_axis(positions: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
        angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(cols), np.arange(rows))  # meshgrid(w, h): the first half is the column
    table = np.concatenate([one_axis(grid_w), one_axis(grid_h)], axis=1)
    return np.concatenate([np.zeros((1, width)), table]) if cls_row else table


def hf_table(width: int, grid: int) -> torch.Tensor:
    return torch.from_numpy(mae_position_table(width, grid, grid, cls_row=True)).float()[None]


def images(count: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every trainable weight moved off its initial value (LayerNorms too), so that no mapping passes by luck."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def hf_config(transformers):
    """A ViTMAE of the TINY shapes, one grey channel, no masking."""
    return transformers.ViTMAEConfig(
        hidden_size=TINY["width"], num_hidden_layers=TINY["depth"], num_attention_heads=TINY["heads"],
        intermediate_size=TINY["mlp_hidden"], image_size=SIZE, patch_size=PATCH, num_channels=1,
        decoder_hidden_size=TINY["decoder_width"], decoder_num_hidden_layers=TINY["decoder_depth"],
        decoder_num_attention_heads=TINY["decoder_heads"], decoder_intermediate_size=TINY["decoder_mlp_hidden"],
        mask_ratio=0.0)


def hf_model(transformers, cls_name: str = "ViTMAEForPreTraining"):
    """A random ViTMAE with MAE-recipe position tables (transformers 5 leaves a fresh model's at zero)."""
    torch.manual_seed(0)
    model = perturbed(getattr(transformers, cls_name)(hf_config(transformers))).eval()
    vit = model.vit if hasattr(model, "vit") else model
    with torch.no_grad():
        vit.embeddings.position_embeddings.copy_(hf_table(TINY["width"], GRID))
        if hasattr(model, "decoder"):
            model.decoder.decoder_pos_embed.copy_(hf_table(TINY["decoder_width"], GRID))
    return model


def identity_noise(count: int) -> torch.Tensor:
    """ViTMAE masks by sorting noise: ascending noise keeps every patch in its own order."""
    return torch.arange(GRID * GRID, dtype=torch.float32).expand(count, -1)


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# 1. the position layout and older checkpoints ------------------------------------------------------------------------

def test_position_tables_follow_the_mae_recipe():
    for width, rows, cols in ((16, 3, 5), (32, 4, 4)):
        expected = torch.from_numpy(mae_position_table(width, rows, cols)).float()
        torch.testing.assert_close(sincos_2d(width, rows, cols), expected, rtol=0, atol=1e-6)
        row_first = sincos_2d(width, rows, cols, "row-first")
        assert torch.equal(row_first, torch.cat([expected[:, width // 2:], expected[:, : width // 2]], dim=1))
    model = rd.create("xs", "vanilla", **TINY)
    assert model.config.position_layout == "mae" and torch.equal(model.encoder.pos_embed, sincos_2d(32, GRID, GRID))


def _strip_layout(path) -> None:
    """Rewrite a checkpoint as written before the layout was recorded: its metadata config without the field."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    config = json.loads(metadata["config"])
    del config["position_layout"]
    save_file(tensors, str(path), metadata=metadata | {"config": json.dumps(config)})


@pytest.mark.parametrize("scheme", ["vanilla", "diffusion"])
def test_a_checkpoint_saved_before_the_layout_field_gives_the_same_outputs(tmp_path, scheme):
    old = perturbed(rd.create("xs", scheme, position_layout="row-first", **TINY)).eval()  # what older code built
    path = rd.save_model(old, tmp_path / "old.safetensors")
    _strip_layout(path)
    loaded = rd.load(path)
    assert loaded.config.position_layout == "row-first" and loaded.config == old.config
    batch, lengths = images(3), [2, 1]
    assert torch.equal(loaded.embed(batch, lengths), old.embed(batch, lengths))
    a = old.reconstruct(batch, lengths, mask_seed=1, seed=2, steps=2)["reconstruction"]
    assert torch.equal(loaded.reconstruct(batch, lengths, mask_seed=1, seed=2, steps=2)["reconstruction"], a)
    new = rd.load(rd.save_model(old, tmp_path / "new.safetensors"))  # written now: the layout is recorded
    assert new.config.position_layout == "row-first"
    assert not torch.equal(rd.create("xs", scheme, **TINY).encoder.pos_embed, old.encoder.pos_embed)


def test_run_configs_and_training_checkpoints_without_the_field_are_row_first(tmp_path):
    model = rd.create("xs", "vanilla", position_layout="row-first", **TINY)
    stored = model.config.to_dict()
    del stored["position_layout"]  # a run's config.json written before the field existed
    assert saved_config(stored) == model.config
    assert saved_config(rd.create("xs", "vanilla", **TINY).config.to_dict()).position_layout == "mae"
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, build_optimizer(model, 1e-3, 0.05), {"step": 3})
    _strip_layout(path)
    resumed = from_config(saved_config(stored))
    assert load_checkpoint(path, resumed, build_optimizer(resumed, 1e-3, 0.05))["step"] == 3
    assert same_parameters(resumed, model)


def test_fine_tuning_at_another_size_recomputes_the_table_in_the_models_layout():
    grid = 48 // PATCH
    for layout in ("row-first", "mae"):
        pretrainer = rd.create("xs", "vanilla", position_layout=layout, **TINY)
        classifier = StudyClassifier.from_pretrained(pretrainer, image_size=48)
        assert torch.equal(classifier.encoder.pos_embed, sincos_2d(TINY["width"], grid, grid, layout))


# 2. initialisation from other weights --------------------------------------------------------------------------------

def original_encoder_tokens(transformers, vit, pixels: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The original implementation's encoder from transformers pieces: ViTMAE embeddings and layers, and after every
    layer the mean CLS of each study written back to its images (the bottleneck, written here), then the final norm."""
    x, _, _ = vit.embeddings(pixels, noise=identity_noise(len(pixels)))
    study = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    sizes = torch.tensor(lengths, dtype=x.dtype)[:, None]
    layers = vit.layers if hasattr(vit, "layers") else vit.encoder.layer  # transformers 5 / 4
    for layer in layers:
        out = layer(x)
        x = out[0] if isinstance(out, tuple) else out
        cls = torch.zeros(len(lengths), x.shape[-1]).index_add_(0, study, x[:, 0]) / sizes
        x = torch.cat([cls[study][:, None], x[:, 1:]], dim=1)
    return vit.layernorm(x)


@torch.no_grad()
def test_the_original_implementations_weights_give_its_tokens_for_studies_of_1_to_4_views(transformers, tmp_path):
    vit = hf_model(transformers, "ViTMAEModel")
    vit.save_pretrained(tmp_path / "hf")
    names = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "encoder.layer.0.attention.attention.query.weight" in names  # the names the original's checkpoints hold
    head = {"model.classifier.weight": torch.ones(3, TINY["width"])}  # the original's classifier: no counterpart
    lightning = {"state_dict": {f"model.vit.{k}": v for k, v in names.items()} | head,
                 "epoch": 7, "global_step": 70}
    torch.save(lightning, tmp_path / "original.ckpt")

    model = rd.create("xs", "vanilla", init=tmp_path / "original.ckpt", **TINY).eval()
    report = model.init_report
    assert report.layout == "Hugging Face ViTMAE layout" and len(report.taken) == ENCODER_TENSORS
    assert report.skipped == ("model.classifier.weight",)
    lengths = [1, 2, 3, 4]
    pixels = images(sum(lengths))
    expected = original_encoder_tokens(transformers, vit, pixels, lengths)
    tokens = model.encoder(patchify(pixels, PATCH), check_batch(pixels, lengths, SIZE))
    assert (tokens - expected).abs().max() <= TOKENS_TOLERANCE
    first = torch.tensor([0, 1, 3, 6])
    assert (model.embed(pixels, lengths) - expected[first, 0]).abs().max() <= TOKENS_TOLERANCE


@torch.no_grad()
def test_an_mae_checkpoint_with_rgb_kernels_and_another_grid_initialises_a_grey_model(tmp_path):
    generator = torch.Generator().manual_seed(3)
    width, hidden, dec, file_grid = TINY["width"], TINY["mlp_hidden"], TINY["decoder_width"], 3

    def random(*shape):
        return torch.randn(*shape, generator=generator)

    def block(prefix: str, w: int, h: int) -> dict:
        return {f"{prefix}.norm1.weight": random(w), f"{prefix}.norm1.bias": random(w),
                f"{prefix}.attn.qkv.weight": random(3 * w, w), f"{prefix}.attn.qkv.bias": random(3 * w),
                f"{prefix}.attn.proj.weight": random(w, w), f"{prefix}.attn.proj.bias": random(w),
                f"{prefix}.norm2.weight": random(w), f"{prefix}.norm2.bias": random(w),
                f"{prefix}.mlp.fc1.weight": random(h, w), f"{prefix}.mlp.fc1.bias": random(h),
                f"{prefix}.mlp.fc2.weight": random(w, h), f"{prefix}.mlp.fc2.bias": random(w)}

    state = {"cls_token": random(1, 1, width), "pos_embed": hf_table(width, file_grid),
             "patch_embed.proj.weight": random(width, 3, PATCH, PATCH), "patch_embed.proj.bias": random(width),
             "norm.weight": random(width), "norm.bias": random(width),
             "mask_token": random(1, 1, dec), "decoder_embed.weight": random(dec, width), "decoder_embed.bias": random(dec),
             "decoder_pos_embed": hf_table(dec, file_grid), "decoder_norm.weight": random(dec),
             "decoder_norm.bias": random(dec), "decoder_pred.weight": random(PATCH * PATCH * 3, dec),
             "decoder_pred.bias": random(PATCH * PATCH * 3), "head.weight": random(10, width), "head.bias": random(10)}
    for i in range(TINY["depth"]):
        state |= block(f"blocks.{i}", width, hidden)
    state |= block("decoder_blocks.0", dec, TINY["decoder_mlp_hidden"])
    torch.save({"model": state}, tmp_path / "mae.pth")

    torch.manual_seed(5)
    fresh = rd.create("xs", "vanilla", **TINY)
    torch.manual_seed(5)
    model = rd.create("xs", "vanilla", init=tmp_path / "mae.pth", **TINY)
    assert torch.equal(model.encoder.patch_embed.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(model.encoder.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.encoder.blocks[0].mlp[2].weight, state["blocks.0.mlp.fc2.weight"])
    assert torch.equal(model.decoder_blocks[0].mlp[0].bias, state["decoder_blocks.0.mlp.fc1.bias"])
    assert torch.equal(model.encoder.cls_token, state["cls_token"])  # the sin-cos CLS position is zero
    assert torch.equal(model.decoder_pred.weight, fresh.decoder_pred.weight)  # 3-channel pixels do not fit: fresh
    assert torch.equal(model.encoder.pos_embed, fresh.encoder.pos_embed)  # computed for the model's own grid

    line = model.init_report.line()
    decoder_taken = 2 + 1 + 12 + 2  # decoder_embed, mask token, one block, decoder norm
    assert f"took {ENCODER_TENSORS + decoder_taken} tensors ({ENCODER_TENSORS} encoder, {decoder_taken} decoder)" in line
    assert "re-initialised 4 (decoder_pred.weight, decoder_pred.bias, statistics_pred.weight, ...)" in line
    assert "skipped 4 of the file (head.weight, head.bias, decoder_pred.weight [192, 16], ...)" in line
    assert "3 input channels summed to 1" in line and "3×3 sin-cos in the file, recomputed for 4×4" in line
    assert "LayerNorm eps stays 1e-12 (the file's model: 1e-06)" in line and "\n" not in line


@torch.no_grad()
def test_the_original_diffmae_cross_self_decoder_maps_part_by_part(tmp_path):
    generator = torch.Generator().manual_seed(6)
    dec = TINY["decoder_width"]
    encoder = rd.create("xs", "diffusion", **TINY)
    rd.export_hf(encoder, tmp_path / "encoder")  # the encoder under Hugging Face names (a bare ViTMAEModel)
    state = {f"model.vit.{k}": v for k, v in load_file(str(tmp_path / "encoder" / "model.safetensors")).items()}

    def linear(name: str, out: int, into: int | None) -> dict:  # into None: a LayerNorm
        weight = torch.randn(out, generator=generator) if into is None else torch.randn(out, into, generator=generator)
        return {f"{name}.weight": weight, f"{name}.bias": torch.randn(out, generator=generator)}

    layer = "model.decoder.decoder_layers.0."
    parts = ["layernorm_before", "cross_attention.attention.query", "cross_attention.attention.key",
             "cross_attention.attention.value", "cross_attention.output.dense", "layernorm_intermediate",
             "attention.attention.query", "attention.attention.key", "attention.attention.value",
             "attention.output.dense", "layernorm_after"]
    for part in parts:
        state |= linear(layer + part, dec, None if "layernorm" in part else dec)
    state |= linear(layer + "intermediate.dense", TINY["decoder_mlp_hidden"], dec)
    state |= linear(layer + "output.dense", dec, TINY["decoder_mlp_hidden"])
    kernel = torch.randn(dec, 1, PATCH, PATCH, generator=generator)
    state["model.decoder.decoder_patch_embeddings.projection.weight"] = kernel
    torch.save({"state_dict": state}, tmp_path / "diffmae.ckpt")

    model = rd.create("xs", "diffusion", init=tmp_path / "diffmae.ckpt", **TINY)  # cross-self: one block of two
    block = model.decoder_blocks[0]

    def original(part: str) -> torch.Tensor:
        return state[f"{layer}{part}.weight"]

    assert torch.equal(block.cross_attn.q.weight, original("cross_attention.attention.query"))
    assert torch.equal(block.cross_attn.kv.weight, torch.cat([original("cross_attention.attention.key"),
                                                              original("cross_attention.attention.value")]))
    qkv = torch.cat([original(f"attention.attention.{x}") for x in ("query", "key", "value")])
    assert torch.equal(block.self_attn.qkv.weight, qkv)
    assert torch.equal(block.norm_query.weight, original("layernorm_before"))
    assert torch.equal(block.norm_self.weight, original("layernorm_intermediate"))
    assert torch.equal(block.norm_mlp.weight, original("layernorm_after"))
    assert torch.equal(block.mlp[2].weight, original("output.dense"))
    assert torch.equal(model.noised_embed.weight, kernel.flatten(1))
    report = model.init_report
    assert "decoder_blocks.0.norm_context.weight" in report.reinitialised and "time_embed.0.weight" in report.reinitialised
    fused = 2 + 2 * 2  # key + value into cross_attn.kv, query + key + value into self_attn.qkv: weights and biases
    assert len(report.taken) == ENCODER_TENSORS + 2 * len(parts) + 4 - fused + 1 and not report.skipped


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


RAW_PICKLE = "ignore:Detected pickle protocol"  # torch's note on a pickle not written by torch.save


@pytest.mark.filterwarnings(RAW_PICKLE)
def test_bad_files_are_refused_in_one_line_and_nothing_is_loaded(tmp_path):
    model = rd.create("xs", "vanilla", **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    wide = rd.create("xs", "vanilla", **(TINY | {"width": 64, "heads": 4}))
    rd.export_hf(wide, tmp_path / "wide")
    rd.export_hf(model, tmp_path / "heads")
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    (tmp_path / "heads" / "config.json").write_text(json.dumps(config | {"num_attention_heads": 4}))
    torch.save({"model": {k: torch.zeros(3) for k in ("cls_token", "patch_embed.proj.weight")}}, tmp_path / "good.pth")
    whole = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.json").write_text('{"not": "weights"}')
    (tmp_path / "code.pkl").write_bytes(pickle.dumps({"model": {"w": RunsCode(marker)}}))
    torch.save({"model": {"w": RunsCode(marker)}}, tmp_path / "code.pth")
    (tmp_path / "no-weights").mkdir()
    cases = {"resnet.pth": "not an MAE, timm, Hugging Face ViTMAE", "wide": "its encoder does not fit this model",
             "heads": "4 attention heads in the file, 2 in this model", "cut.pth": "damaged or truncated weights file",
             "empty.pth": "not a weights file", "notes.json": "not a weights file", "code.pkl": "refused, the pickle holds more than weights",
             "code.pth": "refused, the pickle holds more than weights", "no-weights": "a folder without",
             "absent.pth": "weights not found"}
    for name, message in cases.items():
        with pytest.raises(rd.CheckpointError) as error:
            rd.initialise_from(model, tmp_path / name)
        text = str(error.value)
        assert message in text and name in text and "\n" not in text, text
    assert "posix.system" in str(pytest.raises(rd.CheckpointError, rd.initialise_from, model, tmp_path / "code.pth").value)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# 3. export ------------------------------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("scheme, layout", [("vanilla", "mae"), ("diffusion", "mae"), ("vanilla", "row-first")])
def test_hugging_face_gives_the_exported_models_tokens_for_one_view_studies(transformers, tmp_path, scheme, layout):
    model = perturbed(rd.create("xs", scheme, position_layout=layout, **TINY)).eval()
    rd.export_hf(model, tmp_path / "hf")
    vit = transformers.ViTMAEModel.from_pretrained(tmp_path / "hf", mask_ratio=0.0).eval()
    pixels = images(3)
    out = vit(pixels, noise=identity_noise(3)).last_hidden_state
    assert (out[:, 0] - model.embed(pixels, [1, 1, 1])).abs().max() <= TOKENS_TOLERANCE
    ours = model.encoder(patchify(pixels, PATCH), check_batch(pixels, [1, 1, 1], SIZE))
    assert (out - ours).abs().max() <= TOKENS_TOLERANCE
    if scheme == "vanilla":  # the decoder crosses too: the same predictions for the same mask
        mae = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
        noise = torch.rand(3, GRID * GRID, generator=torch.Generator().manual_seed(4))
        logits = mae(pixels, noise=noise).logits
        grid, studies = model.prepare(pixels, [1, 1, 1])
        visible, masked, _ = random_masking(3, GRID * GRID, model.config.mask_ratio, noise=noise)
        latent = model.encoder(select_patches(grid, visible), studies, visible)
        prediction, _ = model.decode(latent, visible, masked, studies)
        expected = logits.gather(1, masked[..., None].expand(-1, -1, logits.shape[-1]))
        assert (prediction - expected).abs().max() <= TOKENS_TOLERANCE


def test_hugging_face_import_then_export_is_bit_exact(transformers, tmp_path):
    source = hf_model(transformers)
    source.save_pretrained(tmp_path / "source")
    model = rd.create("xs", "vanilla", init=tmp_path / "source", **TINY)
    assert "encoder positions: 4×4 sin-cos in the file" in model.init_report.line()
    rd.export_hf(model, tmp_path / "again")
    written, exported = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("source", "again"))
    encoder = [name for name in written if name.startswith("vit.")]
    assert encoder and all(torch.equal(written[name], exported[name]) for name in encoder)
    again = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "again")
    a, b = source.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_an_existing_folder_and_leaves_no_temporary_files(tmp_path):
    model = rd.create("xs", "diffusion", **TINY)
    line = rd.export_hf(model, tmp_path / "out")
    assert line.startswith("export: encoder -> ") and "ViTMAEModel" in line and "left behind" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(name.startswith(("embeddings.", "encoder.", "layernorm.")) for name in written)  # no decoder
    with pytest.raises(FileExistsError, match="already exists"):
        rd.export_hf(model, tmp_path / "out")


# 4. the commands ------------------------------------------------------------------------------------------------------

def test_export_command(tmp_path, capsys):
    rd.save_model(rd.create("xs", "vanilla", **TINY), tmp_path / "run" / "model.safetensors")
    assert main(["export", str(tmp_path / "run"), "--format", "hf", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("export: encoder + MAE decoder -> ") and out.count("\n") == 1
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    existing, missing = [str(tmp_path / "run"), str(tmp_path / "hf")], [str(tmp_path / "nowhere"), str(tmp_path / "x")]
    for args in (["export", *existing], ["export", *missing]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("raddiffusion export: error: ") and err.count("\n") == 1, err


@pytest.fixture
def store(small_tree, tmp_path):
    preprocess(small_tree.root, tmp_path / "store", image_size=64, workers=1, progress=False)
    return tmp_path / "store"


@pytest.mark.filterwarnings(RAW_PICKLE)
def test_pretrain_command_starts_from_an_mae_checkpoint(store, tmp_path, capsys):
    xs = PRESETS["xs"]
    width, hidden, patch, dec = xs["width"], xs["mlp_hidden"], xs["patch_size"], xs["decoder_width"]
    source = rd.create("xs", "vanilla", image_size=96)  # xs weights at another grid, renamed to the MAE layout below
    state = {"cls_token": source.encoder.cls_token, "pos_embed": hf_table(width, 3),
             "patch_embed.proj.weight": source.encoder.patch_embed.weight.repeat(1, 3, 1, 1),
             "patch_embed.proj.bias": source.encoder.patch_embed.bias,
             "norm.weight": source.encoder.norm.weight, "norm.bias": source.encoder.norm.bias,
             "decoder_embed.weight": source.decoder_embed.weight}
    for i, block in enumerate(source.encoder.blocks):
        for name, tensor in block.state_dict().items():
            state[f"blocks.{i}.{name.replace('mlp.0', 'mlp.fc1').replace('mlp.2', 'mlp.fc2')}"] = tensor
    torch.save({"model": {k: v.detach().clone() for k, v in state.items()}}, tmp_path / "mae.pth")
    assert (width, hidden, patch, dec) == (256, 1024, 32, 128)

    run = tmp_path / "run"
    common = [str(store), "--run", str(run), "--image-size", "64", "--epochs", "1", "--batch-size", "3", "--workers",
              "0", "--probe-every", "0", "--lr", "0", "--device", "cpu", "--quiet"]
    assert main(["pretrain", *common, "--init", str(tmp_path / "mae.pth")]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"init: {tmp_path / 'mae.pth'} (MAE / timm layout): took ") and "3 input channels" in lines[0]
    assert lines[1].startswith("pretrain: xs vanilla") and re.search(r"\(probes: \d+s of \d+s\)", lines[1]), lines[1]
    assert json.loads((run / "config.json").read_text())["init"] == str(tmp_path / "mae.pth")
    trained = rd.load(run)  # learning rate 0: the run's model is the initialised one
    assert torch.equal(trained.encoder.blocks[5].attn.qkv.weight, source.encoder.blocks[5].attn.qkv.weight)
    assert torch.equal(trained.encoder.patch_embed.weight, 3 * source.encoder.patch_embed.weight)
    assert main(["pretrain", *common, "--resume", "--init", str(tmp_path / "other.pth")]) == 2
    assert "was started from" in capsys.readouterr().err  # a resumed run keeps its own weights

    (tmp_path / "code.pth").write_bytes(pickle.dumps({"model": {"w": RunsCode(tmp_path / "code-ran")}}))
    assert main(["pretrain", *common, "--run", str(tmp_path / "other"), "--init", str(tmp_path / "code.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and not (tmp_path / "code-ran").exists()
    assert not (tmp_path / "other" / "config.json").exists()  # checked before the run directory is written
