"""Model checkpoints: safetensors round trip, run directories, and clear refusals of anything else."""
from __future__ import annotations

import pickle

import pytest
import torch

import raddiffusion as rd

TINY = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 2, "heads": 4, "mlp_hidden": 64,
        "decoder_width": 32, "decoder_depth": 2, "decoder_heads": 4, "decoder_mlp_hidden": 64}


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(3, 1, 32, 32) * 2 - 1, torch.tensor([2, 1])


@pytest.mark.parametrize("scheme", ["vanilla", "diffusion"])
def test_round_trip_gives_the_same_model(tmp_path, images, scheme):
    model = rd.create("xs", scheme, **TINY, decoder="joint").eval()
    rd.save_model(model, tmp_path / "m.safetensors")
    loaded = rd.load(tmp_path / "m.safetensors")
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(loaded.embed(*images), model.embed(*images), rtol=0, atol=0)
    a = model.reconstruct(*images, mask_seed=1, seed=2, steps=3)["reconstruction"]
    b = loaded.reconstruct(*images, mask_seed=1, seed=2, steps=3)["reconstruction"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_run_directory_loads_its_model_file(tmp_path, images):
    model = rd.create("xs", "vanilla", **TINY).eval()
    rd.save_model(model, tmp_path / "run" / "model.safetensors")
    torch.testing.assert_close(rd.load(tmp_path / "run").embed(*images), model.embed(*images))


def test_pickle_is_refused_without_being_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(rd.CheckpointError, match="not a safetensors file"):
        rd.load(path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.pt")
    with pytest.raises(rd.CheckpointError, match="never pickles"):
        rd.load(tmp_path / "torch.pt")


def test_truncated_or_foreign_files_give_one_line(tmp_path):
    model = rd.create("xs", "vanilla", **TINY)
    path = rd.save_model(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("cut.safetensors", "empty.safetensors", "absent.safetensors"):
        with pytest.raises(rd.CheckpointError) as info:
            rd.load(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(rd.CheckpointError, match="without a raddiffusion model configuration"):
        rd.load(tmp_path / "foreign.safetensors")


def test_weights_that_do_not_fit_their_configuration(tmp_path):
    import json

    from safetensors.torch import save_file

    model = rd.create("xs", "vanilla", **TINY)
    config = model.config.to_dict() | {"depth": 3}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"), metadata={"format": "raddiffusion-model-v1", "config": json.dumps(config)})
    with pytest.raises(rd.CheckpointError, match="do not fit the configuration: missing"):
        rd.load(tmp_path / "m.safetensors")
