"""Fine-tuning building blocks: drop path, fine-tuning at another size, layer-wise lr decay, augmentation."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import raddiffusion as rd
from raddiffusion.data.augment import NO_AUGMENTATION, Augmentation, augment
from raddiffusion.models import StudyClassifier, create, model_config
from raddiffusion.models.bottleneck import check_batch
from raddiffusion.models.encoder import StudyEncoder
from raddiffusion.models.vit import Block, drop_path, patchify, sincos_2d
from raddiffusion.train.optim import (
    build_classifier_optimizer,
    build_optimizer,
    classifier_parameter_groups,
    set_learning_rate,
)

SIZE, PATCH = 64, 16
TINY = {"image_size": SIZE, "patch_size": PATCH, "width": 32, "depth": 2, "heads": 2, "mlp_hidden": 64,
        "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2, "decoder_mlp_hidden": 64}
LENGTHS = [2, 1, 3]


def tiny_config(**overrides):
    return model_config("xs", "vanilla", **{**TINY, **overrides})


def batch(n: int = sum(LENGTHS), size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def block_and_tokens(rate: float) -> tuple[Block, torch.Tensor]:
    torch.manual_seed(0)
    return Block(32, 2, 64, drop_path=rate), torch.randn(64, 5, 32)


# Drop path


def test_drop_path_zero_is_the_plain_block_and_draws_nothing():
    block, x = block_and_tokens(0.0)
    block.train()
    state = torch.get_rng_state()
    out = block(x)
    assert torch.equal(torch.get_rng_state(), state)
    plain = x + block.attn(block.norm1(x))
    assert torch.equal(out, plain + block.mlp(block.norm2(plain)))


def test_drop_path_is_the_identity_in_eval_mode():
    block, x = block_and_tokens(0.5)
    plain, _ = block_and_tokens(0.0)
    block.eval()
    state = torch.get_rng_state()
    assert torch.equal(block(x), plain.eval()(x))
    assert torch.equal(torch.get_rng_state(), state)


def test_drop_path_drops_whole_samples_while_training():
    block, x = block_and_tokens(0.5)
    expected = block.eval()(x)
    torch.manual_seed(1)
    out = block.train()(x)
    both_dropped = (out == x).flatten(1).all(1)
    changed = (out != expected).flatten(1).any(1)
    assert both_dropped.any() and not both_dropped.all()  # some rows lose both branches, not all
    assert changed.all()  # at rate 0.5 a kept branch is doubled, so no row equals the eval output


def test_drop_path_keeps_the_expected_value():
    x = torch.ones(20_000, 3, 4)
    torch.manual_seed(0)
    out = drop_path(x, 0.25, training=True)
    assert out[:, 0, 0].unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert (out == out[:, :1, :1]).all()  # one decision per sample
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)


def test_encoder_drop_path_rates_are_linear_in_depth():
    rates = [block.drop_path_rate for block in StudyEncoder(tiny_config(depth=5, drop_path=0.2)).blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert [b.drop_path_rate for b in StudyEncoder(tiny_config(depth=1, drop_path=0.2)).blocks] == [0.0]
    model = create("xs", "vanilla", **TINY, drop_path=0.3)
    assert all(block.drop_path_rate == 0.0 for block in model.decoder_blocks)
    with pytest.raises(ValueError, match="drop_path"):
        tiny_config(drop_path=1.0)


def test_encoder_without_drop_path_trains_as_before():
    torch.manual_seed(0)
    model = create("xs", "vanilla", **TINY)
    images = batch()
    state = torch.get_rng_state()
    loss = model.train().loss(images, LENGTHS, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(loss, model.eval().loss(images, LENGTHS, torch.Generator().manual_seed(3)))


def test_checkpoint_from_before_drop_path_still_loads(tmp_path):
    torch.manual_seed(0)
    model = create("xs", "vanilla", **TINY).eval()
    path = rd.save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    config = json.loads(metadata["config"])
    del config["drop_path"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**metadata, "config": json.dumps(config)})
    loaded = rd.load(tmp_path / "old.safetensors")
    assert loaded.config == model.config and loaded.config.drop_path == 0.0
    images = batch()
    assert torch.equal(loaded.embed(images, LENGTHS), model.embed(images, LENGTHS))


# Fine-tuning at another size


def test_fine_tuning_at_another_image_size_keeps_the_encoder_weights():
    torch.manual_seed(0)
    pretrainer = create("xs", "vanilla", **TINY)
    classifier = StudyClassifier.from_pretrained(pretrainer, image_size=96, drop_path=0.1)
    assert classifier.config.image_size == 96 and classifier.config.drop_path == 0.1
    grid = 96 // PATCH
    assert torch.equal(classifier.encoder.pos_embed, sincos_2d(32, grid, grid))
    for name, tensor in pretrainer.encoder.state_dict().items():
        assert torch.equal(classifier.encoder.state_dict()[name], tensor), name
    logits = classifier.eval()(batch(size=96), LENGTHS)
    assert logits.shape == (len(LENGTHS), classifier.config.num_labels) and torch.isfinite(logits).all()
    tokens = classifier.encoder(patchify(batch(1, size=96), PATCH), check_batch(batch(1, size=96), [1], 96))
    assert tokens.shape == (1, 1 + grid * grid, 32)


@pytest.mark.parametrize("field", ["patch_size", "width", "depth", "heads"])
def test_fine_tuning_refuses_another_encoder_shape(field):
    pretrainer = create("xs", "vanilla", **TINY)
    changed = {"patch_size": 8, "width": 64, "depth": 3, "heads": 4}[field]
    with pytest.raises(ValueError, match=field):
        StudyClassifier.from_pretrained(pretrainer, **{field: changed})
    assert StudyClassifier.from_pretrained(pretrainer, **{field: TINY[field]}).config == pretrainer.config


# Layer-wise learning-rate decay


def classifier() -> StudyClassifier:
    torch.manual_seed(0)
    return StudyClassifier(tiny_config())


def lr_of(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> float:
    (lr,) = [g["lr"] for g in optimizer.param_groups if any(p is parameter for p in g["params"])]
    return lr


def test_layer_decay_scales_the_learning_rate_by_depth():
    model, lr = classifier(), 1e-3
    optimizer = build_classifier_optimizer(model, lr, 0.05, layer_decay=0.5, head_lr_scale=10.0)
    encoder = model.encoder
    assert lr_of(optimizer, encoder.patch_embed.weight) == pytest.approx(lr * 0.125)
    assert lr_of(optimizer, encoder.cls_token) == pytest.approx(lr * 0.125)
    assert lr_of(optimizer, encoder.blocks[0].attn.qkv.weight) == pytest.approx(lr * 0.25)
    assert lr_of(optimizer, encoder.blocks[1].mlp[0].bias) == pytest.approx(lr * 0.5)
    assert lr_of(optimizer, encoder.norm.weight) == pytest.approx(lr)
    assert lr_of(optimizer, model.head.weight) == pytest.approx(lr * 10.0)
    set_learning_rate(optimizer, 2 * lr, encoder_lr_factor=0.0)
    assert lr_of(optimizer, model.head.bias) == pytest.approx(2 * lr * 10.0)
    assert all(g["lr"] == 0.0 for g in optimizer.param_groups if g["name"] == "encoder")


def test_classifier_groups_cover_every_parameter_once_with_the_decay_rule():
    model = classifier()
    groups = classifier_parameter_groups(model, 0.05, layer_decay=0.75)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert all(g["params"] for g in groups)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    plain_decayed = {id(p) for p in build_optimizer(model, 1e-3, 0.05).param_groups[0]["params"]}
    assert decayed == plain_decayed
    assert id(model.encoder.cls_token) not in decayed and id(model.head.weight) in decayed
    assert {g["name"] for g in groups} == {"encoder", "head"}


def test_pretraining_groups_keep_the_plain_learning_rate():
    optimizer = build_optimizer(classifier(), 1e-3, 0.05)
    set_learning_rate(optimizer, 3e-4, encoder_lr_factor=0.0)
    assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 3e-4]


def test_layer_decay_settings_are_checked():
    with pytest.raises(ValueError, match="layer_decay"):
        classifier_parameter_groups(classifier(), 0.05, layer_decay=0.0)
    with pytest.raises(ValueError, match="head_lr_scale"):
        classifier_parameter_groups(classifier(), 0.05, head_lr_scale=-1.0)


# Augmentation


def test_no_augmentation_returns_the_input_without_drawing():
    images, generator = batch(), torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert torch.equal(augment(images, NO_AUGMENTATION, generator), images)
    assert torch.equal(generator.get_state(), state)
    assert Augmentation(crop_scale=[1, 1], crop_ratio=(1, 1), rotation=0, brightness=0, contrast=0) == NO_AUGMENTATION


def test_augmentation_is_reproducible_and_keeps_shape_and_range():
    images = batch()
    first = augment(images, Augmentation(), torch.Generator().manual_seed(5))
    again = augment(images, Augmentation(), torch.Generator().manual_seed(5))
    other = augment(images, Augmentation(), torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert first.shape == images.shape and first.min() >= -1 and first.max() <= 1
    assert not torch.allclose(first, images)


def test_no_flip_keeps_the_bright_side_on_the_left():
    images = torch.full((16, 1, SIZE, SIZE), -0.8)
    images[..., : SIZE // 2] = 0.8
    out = augment(images, Augmentation(), torch.Generator().manual_seed(0))
    left, right = out[..., : SIZE // 2].mean((1, 2, 3)), out[..., SIZE // 2 :].mean((1, 2, 3))
    assert (left > right + 1).all()


def test_flip_mirrors_about_half_of_the_images():
    images = batch(16)
    settings = Augmentation(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, brightness=0, contrast=0, hflip=True)
    out = augment(images, settings, torch.Generator().manual_seed(0))
    same = torch.isclose(out, images, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, images.flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same ^ mirrored).all() and same.any() and mirrored.any()


def test_brightness_shifts_the_mean_by_at_most_its_range():
    images, b = batch() * 0.5, 0.2
    settings = Augmentation(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, brightness=b, contrast=0)
    out = augment(images, settings, torch.Generator().manual_seed(0))
    shift = out.mean((1, 2, 3)) - images.mean((1, 2, 3))
    assert (shift.abs() <= b + 1e-6).all() and (shift.abs() > 1e-3).any()
    assert torch.allclose(out - images, shift.view(-1, 1, 1, 1), atol=1e-6)  # a pure shift: no geometric change


def test_contrast_keeps_the_mean_and_scales_the_spread():
    images, c = batch() * 0.5, 0.3
    settings = Augmentation(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, brightness=0, contrast=c)
    out = augment(images, settings, torch.Generator().manual_seed(0))
    assert torch.allclose(out.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=1e-6)
    ratio = out.std((1, 2, 3)) / images.std((1, 2, 3))
    assert ((ratio >= 1 - c - 1e-5) & (ratio <= 1 + c + 1e-5)).all() and (ratio - 1).abs().max() > 0.01


def test_crop_and_rotation_of_a_constant_image_stay_constant():
    images = torch.full((8, 1, SIZE, SIZE), 0.7)
    settings = Augmentation(crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0), rotation=30, brightness=0, contrast=0)
    out = augment(images, settings, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-6)  # border padding: no dark corners


def test_crop_zooms_in():
    images = torch.zeros(4, 1, SIZE, SIZE)
    images[..., :4, :] = images[..., -4:, :] = images[..., :, :4] = images[..., :, -4:] = 1.0  # a bright frame
    settings = Augmentation(crop_scale=(0.5, 0.5), crop_ratio=(1, 1), rotation=0, brightness=0, contrast=0)
    out = augment(images, settings, torch.Generator().manual_seed(0))
    assert (out.mean((1, 2, 3)) < images.mean((1, 2, 3))).all()  # a smaller window shows less of the frame


@pytest.mark.parametrize("options", [{"crop_scale": (0.9, 0.8)}, {"crop_scale": (0.0, 1.0)}, {"crop_scale": (0.5, 1.2)},
                                     {"crop_ratio": (0.0, 1.0)}, {"rotation": -1.0}, {"brightness": -0.1},
                                     {"contrast": 1.0}, {"crop_ratio": (1.0,)}])
def test_augmentation_settings_are_checked(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        Augmentation(**options)
