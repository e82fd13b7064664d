"""Models on random weights and tiny sizes: the study bottleneck, masking, honest reconstruction, training."""
from __future__ import annotations

import math

import pytest
import torch

from raddiffusion.models import PRESETS, create
from raddiffusion.models.diffusion import NoiseSchedule
from raddiffusion.models.mae import normalise_patches
from raddiffusion.models.vit import patchify, random_masking, unpatchify

SIZE, PATCH = 32, 8
GRID = SIZE // PATCH
TINY = {"image_size": SIZE, "patch_size": PATCH, "width": 32, "depth": 2, "heads": 2, "mlp_hidden": 64,
        "decoder_width": 32, "decoder_depth": 2, "decoder_heads": 2, "decoder_mlp_hidden": 64}
SCHEMES = ["vanilla", "diffusion"]


def tiny(scheme: str = "vanilla", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create("xs", scheme, **{**TINY, **overrides}).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def patch_pixels(mask_row: torch.Tensor) -> torch.Tensor:
    """A [SIZE, SIZE] bool image: True on the patches where ``mask_row [L]`` is True."""
    return mask_row.view(GRID, GRID).repeat_interleave(PATCH, 0).repeat_interleave(PATCH, 1)


def test_presets_are_the_original_configurations():
    spec_table = {  # SPEC §3: patch, image, width, depth, heads, MLP, dec width, dec depth, dec heads, dec MLP, mask
        "xs": (32, 256, 256, 6, 8, 1024, 128, 2, 4, 512, 0.5),
        "s": (32, 256, 768, 6, 12, 3072, 512, 4, 16, 2048, 0.75),
        "b": (16, 256, 768, 12, 12, 3072, 512, 8, 16, 2048, 0.5),
    }
    for name, row in spec_table.items():
        config = create(name, "vanilla", depth=1).config
        assert (config.patch_size, config.image_size, config.width) == row[:3] and config.depth == 1
        assert tuple(PRESETS[name].values()) == row
    model = create("xs", "diffusion")
    assert len(model.encoder.blocks) == 6 and len(model.decoder_blocks) == 1  # cross-self: half the depth
    assert model.encoder.norm.eps == 1e-12 and model.encoder.blocks[0].attn.qkv.bias is not None


def test_config_rebuilds_the_same_architecture():
    model = tiny("diffusion", decoder="joint", schedule="seed")
    rebuilt = create(**model.config.to_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert rebuilt.schedule.timesteps == 100


def test_patchify_and_unpatchify_are_inverse_and_match_the_conv_layout():
    x = images(3)
    patches = patchify(x, PATCH)
    assert patches.shape == (3, GRID * GRID, PATCH * PATCH)
    assert torch.equal(unpatchify(patches, PATCH, SIZE, SIZE), x)
    assert torch.equal(patches[1, GRID + 2], x[1, 0, PATCH : 2 * PATCH, 2 * PATCH : 3 * PATCH].flatten())
    encoder = tiny().encoder
    by_conv = encoder.patch_embed(x).flatten(2).transpose(1, 2) + encoder.pos_embed
    torch.testing.assert_close(encoder.embed_patches(patches, None), by_conv)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.3, 0.9])
def test_mask_hides_exactly_the_masked_count_and_is_reproducible(ratio):
    length = 49
    visible, masked, mask = random_masking(6, length, ratio, generator=torch.Generator().manual_seed(1))
    hidden = length - int(length * (1 - ratio))
    assert (mask.sum(1) == hidden).all() and masked.shape == (6, hidden)
    assert not mask.gather(1, visible).any() and mask.gather(1, masked).all()
    again = random_masking(6, length, ratio, generator=torch.Generator().manual_seed(1))[2]
    other = random_masking(6, length, ratio, generator=torch.Generator().manual_seed(2))[2]
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    noise = torch.rand(6, length)
    assert torch.equal(random_masking(6, length, ratio, noise=noise)[2], random_masking(6, length, ratio, noise=noise)[2])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reconstruction_mask_follows_mask_seed(scheme):
    model, x = tiny(scheme, mask_ratio=0.75), images(3)
    first = model.reconstruct(x, [2, 1], mask_seed=3, steps=2)["mask"]
    assert first.shape == (3, GRID * GRID) and (first.sum(1) == 16 - int(16 * 0.25)).all()
    assert torch.equal(first, model.reconstruct(x, [2, 1], mask_seed=3, steps=2)["mask"])
    assert not torch.equal(first, model.reconstruct(x, [2, 1], mask_seed=4, steps=2)["mask"])


def test_study_vector_is_invariant_to_view_order():
    model, x = tiny(), images(5)
    z = model.embed(x, [3, 2])
    shuffled = model.embed(x[[2, 0, 1, 4, 3]], [3, 2])
    assert z.shape == (2, 32)
    torch.testing.assert_close(shuffled, z, rtol=0, atol=1e-5)


def test_changing_one_study_never_changes_another():
    model, x = tiny(), images(6)
    z = model.embed(x, [2, 3, 1])
    changed = x.clone()
    changed[2:5] = images(3, seed=9)
    z_changed = model.embed(changed, [2, 3, 1])
    torch.testing.assert_close(z_changed[[0, 2]], z[[0, 2]], rtol=0, atol=1e-6)
    assert (z_changed[1] - z[1]).abs().max() > 1e-3


def test_second_view_changes_the_study_vector():
    model, x = tiny(), images(2)
    changed = x.clone()
    changed[1] = images(1, seed=5)[0]
    assert (model.embed(changed, [2]) - model.embed(x, [2])).abs().max() > 1e-3


def test_one_image_study_is_the_same_alone_or_batched():
    model, x = tiny(), images(4)
    alone = model.embed(x[2:3], [1])
    batched = model.embed(x, torch.tensor([2, 1, 1]))
    torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-5)


def test_image_size_512_works():
    model = create("xs", "vanilla", image_size=512, depth=1, decoder_depth=1).eval()
    assert model.embed(torch.zeros(2, 1, 512, 512), [2]).shape == (1, 256)


@pytest.mark.parametrize("scheme,decoder", [("vanilla", "joint"), ("diffusion", "joint"),
                                            ("diffusion", "cross"), ("diffusion", "cross-self")])
def test_every_parameter_learns(scheme, decoder):
    model = tiny(scheme, decoder=decoder).train()
    model.loss(images(5), torch.tensor([3, 2])).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("scheme,options,steps", [
    ("vanilla", {}, None), ("vanilla", {"norm_pix_loss": False}, None),
    ("diffusion", {}, 5), ("diffusion", {"decoder": "joint"}, 5), ("diffusion", {"decoder": "cross"}, 5),
    ("diffusion", {"schedule": "seed"}, None),  # DDPM over all T steps
])
def test_reconstruction_is_honest(scheme, options, steps):
    model, x, lengths = tiny(scheme, **options), images(3), [2, 1]
    result = model.reconstruct(x, lengths, mask_seed=1, seed=2, steps=steps)
    hidden = torch.stack([patch_pixels(row) for row in result["mask"]])[:, None]
    masked_changed = torch.where(hidden, images(3, seed=7), x)
    again = model.reconstruct(masked_changed, lengths, mask_seed=1, seed=2, steps=steps)
    assert torch.equal(again["reconstruction"], result["reconstruction"])
    if scheme == "diffusion":
        assert all(torch.equal(a, b) for a, b in zip(again["frames"], result["frames"]))
    visible_changed = torch.where(hidden, x, images(3, seed=8))
    moved = model.reconstruct(visible_changed, lengths, mask_seed=1, seed=2, steps=steps)["reconstruction"]
    assert (moved - result["reconstruction"])[hidden].abs().max() > 1e-4  # the inpainted part follows
    out = result["reconstruction"]
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[~hidden], x[~hidden])


def test_diffusion_frames_and_sampler_seed():
    model, x = tiny("diffusion"), images(3)
    result = model.reconstruct(x, [3], seed=0, steps=7)
    assert len(result["frames"]) == 8 and torch.equal(result["frames"][-1], result["reconstruction"])
    assert not torch.equal(model.reconstruct(x, [3], seed=1, steps=7)["reconstruction"], result["reconstruction"])


def test_noise_schedules():
    seed = NoiseSchedule("seed")
    assert seed.timesteps == 100 and math.isclose(seed.alpha_bar[-1].item(), 0.257, abs_tol=2e-3)
    assert NoiseSchedule().alpha_bar[-1] < 1e-4 and NoiseSchedule("linear").alpha_bar[-1] < 1e-3
    assert seed.sampling_timesteps(None) == list(range(99, -1, -1))
    assert seed.sampling_timesteps(4) == [99, 66, 33, 0]
    x0 = torch.rand(4, 3)
    assert torch.equal(seed.ddim_step(torch.randn(4, 3), x0, 0, -1), x0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])  # ᾱ_T ≈ 0: pure noise is x_T
def test_samplers_follow_the_forward_marginals_with_a_perfect_denoiser(schedule):
    """With x0 known, DDIM keeps the noise ε of its start (x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε exactly)
    and the DDPM posterior, started from pure noise, gives x_t the forward process' mean and spread."""
    noise_schedule, x0 = NoiseSchedule(schedule), torch.full((4000, 4), 0.5)
    for steps in (None, 7):
        states = []
        noise_schedule.sample(lambda x, t: x0, tuple(x0.shape), torch.Generator().manual_seed(0), x0.device,
                              steps, on_step=states.append)
        timesteps = noise_schedule.sampling_timesteps(steps)
        assert len(states) == len(timesteps) + 1 and torch.equal(states[-1], x0)
        middle = len(timesteps) // 2  # states[i] is x at timesteps[i] (states[0] the start noise)
        x_t, t = states[middle], timesteps[middle]
        if steps is not None:
            start = torch.full((len(x0),), timesteps[0])
            noise = (states[0] - noise_schedule.add_noise(x0, start, torch.zeros_like(x0))) / noise_schedule.add_noise(
                torch.zeros_like(x0), start, torch.ones_like(x0))
            expected = noise_schedule.add_noise(x0, torch.full((len(x0),), t), noise)
            torch.testing.assert_close(x_t, expected, rtol=0, atol=1e-5)
        else:
            alpha_bar = noise_schedule.alpha_bar[t].item()
            assert abs(x_t.mean().item() - math.sqrt(alpha_bar) * 0.5) < 0.01
            assert abs(x_t.std().item() / math.sqrt(1 - alpha_bar) - 1) < 0.02


def test_norm_pix_target_is_the_patch_standardised():
    patches = torch.rand(2, 3, PATCH * PATCH)
    normalised, mean, std = normalise_patches(patches)
    torch.testing.assert_close(mean, patches.mean(-1, keepdim=True))
    torch.testing.assert_close(std, (patches.var(-1, keepdim=True) + 1e-6).sqrt())
    torch.testing.assert_close(normalised * std + mean, patches)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bf16_autocast_and_compiled_training_steps(scheme):
    """The accelerator code paths (bf16 autocast, ``torch.compile``) on the CPU: finite loss and gradients."""
    model, x, lengths = tiny(scheme).train(), images(5), torch.tensor([3, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(x, lengths)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()
    compiled = torch.compile(model.loss, backend="aot_eager")
    loss = compiled(x, lengths)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def smooth_images(n: int) -> torch.Tensor:
    """Learnable images: a bright disc at a different place on a gradient."""
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    out = [0.4 * rows + 0.8 * ((rows - 0.5 * math.sin(i)) ** 2 + (cols - 0.5 * math.cos(i)) ** 2 < 0.3) - 0.3
           for i in range(n)]
    return torch.stack(out)[:, None].clamp(-1, 1)


def masked_error(model: torch.nn.Module, x: torch.Tensor, lengths: list[int]) -> float:
    result = model.reconstruct(x, lengths, mask_seed=0, seed=0, steps=10)
    hidden = torch.stack([patch_pixels(row) for row in result["mask"]])[:, None]
    return ((result["reconstruction"] - x)[hidden] ** 2).mean().item()


def test_diffmae_learns_a_handful_of_images():
    torch.manual_seed(0)
    model, x, lengths = tiny("diffusion"), smooth_images(4), [2, 2]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, errors = [], [masked_error(model, x, lengths)]
    for step in range(400):
        model.train()
        loss = model.loss(x, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step in (99, 399):
            errors.append(masked_error(model.eval(), x, lengths))
    assert sum(losses[-50:]) < 0.5 * sum(losses[:50])
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.4 * errors[0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bad_input_is_a_clear_value_error(scheme):
    model, x = tiny(scheme), images(3)
    cases = [
        (x[:, 0], [3], "shape"),
        (x.expand(3, 3, SIZE, SIZE), [3], "shape"),
        (torch.zeros(3, 1, SIZE + PATCH, SIZE + PATCH), [3], "takes"),
        (x, [2, 2], "sum to 4"),
        (x, [3, 0], "at least one image"),
        (x, torch.tensor([1.5, 1.5]), "integer"),
        (torch.where(torch.arange(SIZE) == 3, torch.nan, x), [3], "NaN"),
        (x.long(), [3], "float"),
    ]
    for bad, lengths, message in cases:
        for call in (model.loss, model.embed, model.reconstruct):
            with pytest.raises(ValueError, match=message):
                call(bad, lengths)


def test_bad_options_are_value_errors():
    for kwargs, message in [({"preset": "m"}, "preset"), ({"scheme": "gan"}, "scheme"),
                            ({"decoder": "mixed"}, "decoder"), ({"schedule": "square"}, "schedule"),
                            ({"mask_ratio": 1.0}, "mask_ratio"), ({"patch_size": 30}, "multiple"),
                            ({"colour": True}, "unknown")]:
        with pytest.raises(ValueError, match=message):
            create(**kwargs)


def test_timestep_embedding_stays_on_the_device_of_its_timesteps():
    """Every tensor of the embedding is made where the timesteps are (a CPU table breaks GPU training)."""
    from raddiffusion.models.vit import timestep_embedding

    embedded = timestep_embedding(torch.arange(5, device="meta"), 16)
    assert embedded.device.type == "meta" and embedded.shape == (5, 16)


CHECKPOINT_CASES = [("vanilla", "joint"), ("diffusion", "joint"), ("diffusion", "cross"), ("diffusion", "cross-self")]


def twin_with_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """The same model (same weights) with ``grad_checkpoint`` switched on."""
    twin = create(**{**model.config.to_dict(), "grad_checkpoint": True})
    twin.load_state_dict(model.state_dict())
    return twin


def loss_and_gradients(model: torch.nn.Module, loss_of, seed: int = 3) -> tuple[torch.Tensor, dict]:
    """One training forward + backward from the same random state: drop path draws from the global state."""
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of(model)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_training(plain: torch.nn.Module, checkpointed: torch.nn.Module, loss_of) -> None:
    loss, grads = loss_and_gradients(plain, loss_of)
    loss_c, grads_c = loss_and_gradients(checkpointed, loss_of)
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=1e-7)
    assert grads_c.keys() == grads.keys() and all(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        assert torch.allclose(grads_c[name], grads[name], rtol=1e-5, atol=1e-7), name
    with torch.no_grad():  # drop path was active: the training loss is not the eval loss
        assert not torch.equal(loss, loss_of(plain.eval()))


def pretraining_loss(x: torch.Tensor, lengths: list[int]):
    return lambda model: model.loss(x, lengths, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("scheme,decoder", CHECKPOINT_CASES)
def test_grad_checkpoint_keeps_the_loss_and_every_gradient(scheme, decoder):
    plain = tiny(scheme, decoder=decoder, depth=3, decoder_depth=2, drop_path=0.5)
    checkpointed = twin_with_checkpointing(plain)
    assert checkpointed.config.grad_checkpoint and not plain.config.grad_checkpoint
    assert_same_training(plain, checkpointed, pretraining_loss(images(5), [2, 3]))


def test_grad_checkpoint_keeps_the_classifier_loss_and_gradients():
    from raddiffusion.models import StudyClassifier

    pretrained = tiny(depth=3)
    plain = StudyClassifier.from_pretrained(pretrained, drop_path=0.5)
    checkpointed = StudyClassifier.from_pretrained(pretrained, drop_path=0.5, grad_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())  # the same fresh head
    assert checkpointed.config.grad_checkpoint and checkpointed.encoder.grad_checkpoint
    x, lengths = images(5), [2, 3]
    labels = (torch.rand(2, plain.config.num_labels, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    assert_same_training(plain, checkpointed,
                         lambda model: torch.nn.functional.binary_cross_entropy_with_logits(model(x, lengths), labels))


@pytest.mark.parametrize("scheme,decoder", CHECKPOINT_CASES)
def test_grad_checkpoint_runs_every_block_checkpointed_only_when_training(scheme, decoder, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        assert kwargs["use_reentrant"] is False and kwargs.get("preserve_rng_state", True)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    model = tiny(scheme, decoder=decoder, depth=3, decoder_depth=4, grad_checkpoint=True)
    blocks = [*model.encoder.blocks, *model.decoder_blocks]
    loss_of = pretraining_loss(images(3), [1, 2])
    loss_of(model.train()).backward()
    assert [id(block) for block in calls] == [id(block) for block in blocks]  # each block once, in order
    calls.clear()
    with torch.no_grad():
        loss_of(model.train())
    loss_of(model.eval())
    model.embed(images(3), [1, 2])
    model.reconstruct(images(3), [1, 2], steps=2)
    assert calls == []
    tiny(scheme, decoder=decoder).train().loss(images(3), [1, 2]).backward()  # off by default
    assert calls == []


def test_grad_checkpoint_is_a_runtime_option_of_saved_models_and_resumed_runs(tmp_path):
    from raddiffusion.cli import MODEL_OPTIONS, _explicit, build_parser
    from raddiffusion.models import ModelConfig
    from raddiffusion.train.checkpoint import save_model
    from raddiffusion.train.finetune import FinetuneSettings, _initial_model
    from raddiffusion.train.pretrain import _resolve_model
    from raddiffusion.train.runs import RunError, load_checkpoint, save_checkpoint

    old = tiny().config.to_dict()
    del old["grad_checkpoint"]  # a configuration saved before the option existed
    assert ModelConfig(**old).grad_checkpoint is False and create(**old).encoder.grad_checkpoint is False
    # a training checkpoint loads whatever grad_checkpoint it was saved with
    plain, checkpointed = tiny(), tiny(grad_checkpoint=True)
    optimizer = torch.optim.AdamW(plain.parameters())
    save_checkpoint(tmp_path / "checkpoint.safetensors", plain, optimizer, {"step": 4})
    assert load_checkpoint(tmp_path / "checkpoint.safetensors", checkpointed, None) == {"step": 4}
    with pytest.raises(Exception, match="another model"):
        load_checkpoint(tmp_path / "checkpoint.safetensors", tiny(mask_ratio=0.25), None)
    # a resumed run may switch it on or off, and nothing else
    stored = {"model": plain.config.to_dict()}
    assert _resolve_model(stored, {"preset": "xs", "grad_checkpoint": True}, tmp_path).grad_checkpoint is True
    assert _resolve_model(stored, {}, tmp_path) == plain.config
    with pytest.raises(RunError, match="mask_ratio"):
        _resolve_model(stored, {"grad_checkpoint": True, "mask_ratio": 0.25}, tmp_path)
    classifier = _initial_model(stored, None, {"grad_checkpoint": True}, tmp_path, None, {})
    assert classifier.config.grad_checkpoint and classifier.encoder.grad_checkpoint
    # fine-tuning a pretrained encoder may switch it on
    save_model(plain, tmp_path / "pretrained.safetensors")
    classifier = _initial_model(None, tmp_path / "pretrained.safetensors", {"grad_checkpoint": True}, tmp_path,
                                FinetuneSettings(), {})
    assert classifier.config.grad_checkpoint and classifier.encoder.grad_checkpoint
    # the command line
    for command in (["pretrain", "STORE"], ["finetune", "STORE"]):
        args = build_parser().parse_args([*command, "--run", "R", "--grad-checkpoint"])
        assert _explicit(args, MODEL_OPTIONS)["grad_checkpoint"] is True
        args = build_parser().parse_args([*command, "--run", "R"])
        assert "grad_checkpoint" not in _explicit(args, MODEL_OPTIONS)
