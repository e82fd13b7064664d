"""Weights in and out: start a model from MAE, timm, Hugging Face ViTMAE or original-implementation weights,
and export one as a Hugging Face ViTMAE folder.

In (:func:`initialise_from`; ``create(init=...)``, ``raddiffusion pretrain --init``):

- an MAE checkpoint in the facebookresearch layout (``{"model": state_dict}``) or a timm ViT state dict;
- a Hugging Face ViTMAE folder (config.json + model.safetensors or pytorch_model.bin; the ``vit.`` prefix of
  ViTMAEForPreTraining, or none for a bare ViTMAEModel);
- a checkpoint of the original implementation (ViTMAEBottleneck / DiffMAEBottleneck: Hugging Face names,
  also inside a Lightning ``{"state_dict": {"model.vit....": ...}}``).

The encoder must fit the model exactly (else CheckpointError, nothing loaded). RGB patch kernels are summed to
the one grey channel. Position tables are never copied: the model's fixed sin-cos tables are computed for its
own grid, and the file's are only checked against them. Decoder weights are taken where names and shapes fit;
the rest keeps the model's fresh initialisation. LayerNorm eps stays the model's (1e-12; MAE and timm train
with 1e-6). Pickles are read only by ``torch.load(weights_only=True)``; nothing is downloaded.

Out (:func:`export_hf`): the encoder, and a vanilla MAE's decoder, as a ViTMAE folder. The study fusion
between views, DiffMAE decoders, the MAE's patch-statistics head and a classifier's head have no ViTMAE
counterpart and stay behind.
"""
from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import first_line
from ..fileio import atomic_folder, read_json, write_json
from ..models.mae import MAE
from ..models.presets import ModelConfig
from ..models.vit import INIT_STD, LAYER_NORM_EPS, sincos_2d
from .checkpoint import HEADER_LENGTH_BYTES, CheckpointError, read_safetensors

ENCODER, DECODER = "encoder", "decoder"  # the two position tables
ENCODER_BLOCKS, DECODER_BLOCKS = "encoder.blocks", "decoder_blocks"  # where our models keep their blocks
MAE_LAYER_NORM_EPS = 1e-6  # what MAE and timm ViTs are trained with
SINCOS_TOLERANCE = 1e-5  # a file's position table this close to ours is the same fixed sin-cos table
HF_WEIGHTS, HF_CONFIG, HF_PICKLED_WEIGHTS = "model.safetensors", "config.json", "pytorch_model.bin"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
PICKLE_PROTOCOL_MARK = b"\x80"  # the PROTO opcode that starts a pickle of protocol 2 or later
CONTAINERS = ("model", "state_dict")  # MAE's {"model": ...}, Lightning's {"state_dict": ...}
NAMES_SHOWN = 3

# Each layout maps a file's names (after the model's prefix) to ours. Blocks map part by part; a value
# (name, slot) puts the tensor at that slot of a fused weight (q, k, v are the rows of our attn.qkv).
MAE_NAMES = {
    "cls_token": "encoder.cls_token",
    "patch_embed.proj": "encoder.patch_embed",
    "norm": "encoder.norm",
    "decoder_embed": "decoder_embed",
    "mask_token": "mask_token",
    "decoder_norm": "decoder_norm",
    "decoder_pred": "decoder_pred",
}
MAE_POSITIONS = {"pos_embed": ENCODER, "decoder_pos_embed": DECODER}
MAE_BLOCKS = {r"blocks\.(\d+)\.": ENCODER_BLOCKS, r"decoder_blocks\.(\d+)\.": DECODER_BLOCKS}
MAE_BLOCK = {
    "norm1": ("norm1", 0),
    "attn.qkv": ("attn.qkv", 0),
    "attn.proj": ("attn.proj", 0),
    "norm2": ("norm2", 0),
    "mlp.fc1": ("mlp.0", 0),
    "mlp.fc2": ("mlp.2", 0),
}

HF_NAMES = {
    "embeddings.cls_token": "encoder.cls_token",
    "embeddings.patch_embeddings.projection": "encoder.patch_embed",
    "layernorm": "encoder.norm",
    "decoder.decoder_embed": "decoder_embed",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_norm": "decoder_norm",
    "decoder.decoder_pred": "decoder_pred",
    "decoder.decoder_patch_embeddings.projection": "noised_embed",  # the original DiffMAE's noised patches
}
HF_POSITIONS = {"embeddings.position_embeddings": ENCODER, "decoder.decoder_pos_embed": DECODER}
HF_BLOCKS = {
    r"(?:encoder\.layer|layers)\.(\d+)\.": ENCODER_BLOCKS,  # layers: transformers 5 in memory
    r"decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.": DECODER_BLOCKS,  # the latter: as transformers 5 saves
}
HF_EXPORT_BLOCKS = {ENCODER_BLOCKS: "encoder.layer", DECODER_BLOCKS: "decoder.decoder_layers"}
HF_BLOCK = {  # a ViTMAELayer -> a Block; the names every transformers version reads
    "layernorm_before": ("norm1", 0),
    "attention.attention.query": ("attn.qkv", 0),
    "attention.attention.key": ("attn.qkv", 1),
    "attention.attention.value": ("attn.qkv", 2),
    "attention.output.dense": ("attn.proj", 0),
    "layernorm_after": ("norm2", 0),
    "intermediate.dense": ("mlp.0", 0),
    "output.dense": ("mlp.2", 0),
}
HF5_BLOCK = {  # the same layer as transformers 5 names it in memory
    "attention.q_proj": ("attn.qkv", 0),
    "attention.k_proj": ("attn.qkv", 1),
    "attention.v_proj": ("attn.qkv", 2),
    "attention.o_proj": ("attn.proj", 0),
    "mlp.fc1": ("mlp.0", 0),
    "mlp.fc2": ("mlp.2", 0),
}
ORIGINAL_CROSS_BLOCK = {  # a layer of the original DiffMAE's cross(-self) decoder -> a CrossBlock
    "layernorm_before": ("norm_query", 0),
    "cross_attention.attention.query": ("cross_attn.q", 0),
    "cross_attention.attention.key": ("cross_attn.kv", 0),
    "cross_attention.attention.value": ("cross_attn.kv", 1),
    "cross_attention.output.dense": ("cross_attn.proj", 0),
    "layernorm_intermediate": ("norm_self", 0),
    "attention.attention.query": ("self_attn.qkv", 0),
    "attention.attention.key": ("self_attn.qkv", 1),
    "attention.attention.value": ("self_attn.qkv", 2),
    "attention.output.dense": ("self_attn.proj", 0),
    "layernorm_after": ("norm_mlp", 0),
    "intermediate.dense": ("mlp.0", 0),
    "output.dense": ("mlp.2", 0),
}


@dataclass(frozen=True)
class KeyLayout:
    """How one family of checkpoints names a ViT's weights."""

    title: str
    anchor: str  # the patch kernel's name: what comes before it is the model's prefix
    encoder_prefix: str  # the part of that prefix a decoder does not share ("vit." of ViTMAEForPreTraining)
    names: dict[str, str]
    positions: dict[str, str]
    blocks: dict[str, str]
    block: dict[str, tuple[str, int]]
    cross_block: dict[str, tuple[str, int]] = field(default_factory=dict)
    layer_norm_eps: float = LAYER_NORM_EPS


MAE_KEYS = KeyLayout("MAE / timm layout", "patch_embed.proj.weight", "", MAE_NAMES, MAE_POSITIONS, MAE_BLOCKS,
                     MAE_BLOCK, layer_norm_eps=MAE_LAYER_NORM_EPS)
HF_KEYS = KeyLayout("Hugging Face ViTMAE layout", "embeddings.patch_embeddings.projection.weight", "vit.", HF_NAMES,
                    HF_POSITIONS, HF_BLOCKS, HF_BLOCK | HF5_BLOCK, ORIGINAL_CROSS_BLOCK)


@dataclass(frozen=True)
class InitReport:
    """What an initialisation took from a file (our names), kept fresh, and left in the file."""

    source: Path
    layout: str
    taken: tuple[str, ...]
    reinitialised: tuple[str, ...]
    skipped: tuple[str, ...]
    notes: tuple[str, ...]

    def line(self) -> str:
        """One summary line: counts, the first names of each list, and what differs."""
        encoder = sum(name.startswith("encoder.") for name in self.taken)
        return (f"init: {self.source} ({self.layout}): took {len(self.taken)} tensors ({encoder} encoder, "
                f"{len(self.taken) - encoder} decoder), re-initialised {len(self.reinitialised)}"
                f"{_some(self.reinitialised)}, skipped {len(self.skipped)} of the file{_some(self.skipped)}"
                + "".join(f"; {note}" for note in self.notes))


@dataclass(frozen=True)
class InitPlan:
    """The tensors an initialisation copies (our names, fitted shapes) and its report."""

    tensors: dict[str, torch.Tensor]
    report: InitReport


def initialise_from(model: nn.Module, path: str | Path) -> InitReport:
    """Load the weights of ``path`` that fit ``model`` (see the module docstring); CheckpointError loads nothing."""
    return apply_init(model, plan_init(path, model))


def apply_init(model: nn.Module, plan: InitPlan) -> InitReport:
    """Copy a plan's tensors into ``model`` (one built like the model it was planned for); returns its report."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in plan.tensors.items():
            parameters[name].copy_(tensor)
    return plan.report


def plan_init(path: str | Path, model: nn.Module) -> InitPlan:
    """What :func:`initialise_from` would load into ``model`` (its shapes suffice: a meta-device model will do).

    CheckpointError (one line) for a file that cannot be read or whose encoder does not fit.
    """
    file, hf_config = locate_weights(Path(path))
    keys, tensors, outside = strip_prefix(read_tensors(file), file)
    renamed, positions, unnamed = rename(tensors, keys)
    parameters = dict(model.named_parameters())
    fitted, misfits = fit(renamed, parameters)
    check_encoder(file, model.config, parameters, renamed, fitted)
    check_heads(file, model.config, hf_config)
    notes, cls_position = position_notes(positions, model.config)
    if cls_position is not None:  # the file adds a position to its CLS token: the same as a shifted token
        fitted["encoder.cls_token"] = fitted["encoder.cls_token"] + cls_position.to(fitted["encoder.cls_token"].dtype)
    unused = [name for name in renamed if name not in parameters]
    report = InitReport(
        source=file, layout=keys.title, taken=tuple(fitted),
        reinitialised=tuple(name for name in parameters if name not in fitted),
        skipped=tuple(outside + unnamed + unused + misfits),
        notes=tuple(notes + kernel_notes(renamed) + eps_notes(keys, hf_config)),
    )
    return InitPlan(fitted, report)


# reading -------------------------------------------------------------------------------------------------------------

def locate_weights(path: Path) -> tuple[Path, dict | None]:
    """The weights file of ``path`` (a file, or a Hugging Face folder) and the folder's config.json, if any."""
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise CheckpointError(f"{path}: weights not found")
    config = read_json(path / HF_CONFIG) if (path / HF_CONFIG).is_file() else None
    for name in (HF_WEIGHTS, HF_PICKLED_WEIGHTS):
        if (path / name).is_file():
            return path / name, config
    raise CheckpointError(f"{path}: a folder without {HF_WEIGHTS} or {HF_PICKLED_WEIGHTS}")


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a PyTorch state dict (also inside ``model`` / ``state_dict``)."""
    if looks_like_safetensors(file):
        return read_safetensors(file)[1]
    loaded = torch_load(file)
    for key in CONTAINERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:
        raise CheckpointError(f"{file}: holds no state dict of tensors ({type(loaded).__name__})")
    return tensors


def looks_like_safetensors(file: Path) -> bool:
    """A safetensors file starts with its header's length, then the header's ``{``."""
    with open(file, "rb") as handle:
        head = handle.read(HEADER_LENGTH_BYTES + 1)
    return head[HEADER_LENGTH_BYTES:] == b"{"


def looks_like_torch_save(file: Path) -> bool:
    """``torch.save`` writes a zip archive (``PK``), or a bare pickle (protocol 2+ starts with byte 0x80)."""
    with open(file, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    return head == ZIP_MAGIC or head[:1] == PICKLE_PROTOCOL_MARK


def torch_load(file: Path) -> object:
    """``torch.load(weights_only=True)``: a pickle holding anything but tensors and plain containers is refused."""
    if not looks_like_torch_save(file):
        raise CheckpointError(f"{file}: not a weights file (neither safetensors nor a PyTorch checkpoint); "
                              "nothing loaded")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{file}: refused, the pickle holds more than weights ({refusal_reason(exc)}); "
                              "nothing was run or loaded") from None
    except Exception as exc:  # a damaged file fails in many ways (EOFError, RuntimeError from the zip reader, ...)
        reason = first_line(exc).split(". ")[0]
        raise CheckpointError(f"{file}: damaged or truncated weights file ({type(exc).__name__}: {reason})") from None


def refusal_reason(exc: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` objected to, e.g. ``unsupported GLOBAL posix.system``."""
    match = re.search(r"unsupported [^\n]*?(?= whose|\n|$)", str(exc), re.IGNORECASE)
    return match.group(0) if match else "torch.load with weights_only=True refused it"


# names ---------------------------------------------------------------------------------------------------------------

def strip_prefix(tensors: dict[str, torch.Tensor], file: Path) -> tuple[KeyLayout, dict[str, torch.Tensor], list[str]]:
    """The layout of the names, the tensors under the model's prefix (without it), the names outside it."""
    for keys in (HF_KEYS, MAE_KEYS):
        anchors = [name for name in tensors if name == keys.anchor or name.endswith("." + keys.anchor)]
        if anchors:
            prefix = min(anchors, key=len)[: -len(keys.anchor)]
            root = prefix.removesuffix(keys.encoder_prefix)  # where a decoder beside the encoder starts
            kept, outside = {}, []
            for name, tensor in tensors.items():
                if name.startswith(prefix):
                    kept[name[len(prefix):]] = tensor
                elif prefix != root and name.startswith(root + "decoder."):
                    kept[name[len(root):]] = tensor
                else:
                    outside.append(name)
            return keys, kept, outside
    shown = ", ".join(list(tensors)[:NAMES_SHOWN])
    raise CheckpointError(f"{file}: not an MAE, timm, Hugging Face ViTMAE or original-implementation checkpoint "
                          f"(no patch embedding among its {len(tensors)} tensors: {shown}, ...); nothing loaded")


def rename(
    tensors: dict[str, torch.Tensor], keys: KeyLayout
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """``(ours, position tables by part, names without a counterpart)``; fused pieces joined in slot order."""
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    positions, unnamed = {}, []
    cross = cross_layers(tensors, keys)
    for name, tensor in tensors.items():
        if name in keys.positions:
            positions[keys.positions[name]] = tensor
            continue
        target = our_name(name, keys, cross)
        if target is None:
            unnamed.append(name)
        else:
            pieces.setdefault(target[0], {})[target[1]] = tensor
    return {name: join_slots(parts) for name, parts in pieces.items()}, positions, unnamed


def join_slots(parts: dict[int, torch.Tensor]) -> torch.Tensor:
    """The pieces of a fused weight stacked in slot order (one piece: itself)."""
    return torch.cat([parts[slot] for slot in sorted(parts)]) if len(parts) > 1 else next(iter(parts.values()))


def cross_layers(tensors: dict[str, torch.Tensor], keys: KeyLayout) -> set[str]:
    """Indices of the decoder layers that hold cross-attention (the original DiffMAE's)."""
    decoder = [pattern for pattern, ours in keys.blocks.items() if ours == DECODER_BLOCKS]
    return {match.group(1) for pattern in decoder for name in tensors
            if "cross_attention." in name and (match := re.match(pattern, name))}


def our_name(name: str, keys: KeyLayout, cross: set[str]) -> tuple[str, int] | None:
    """``(our name, slot)`` of a file's name, or None when this project's models have no counterpart."""
    if name in keys.names:
        return keys.names[name], 0
    module, _, leaf = name.rpartition(".")
    if module in keys.names:
        return f"{keys.names[module]}.{leaf}", 0
    for pattern, ours in keys.blocks.items():
        match = re.match(pattern + r"(.+)\.(weight|bias)$", name)
        if match:
            index, part, leaf = match.groups()
            table = keys.cross_block if ours == DECODER_BLOCKS and index in cross else keys.block
            if part in table:
                inner, slot = table[part]
                return f"{ours}.{index}.{inner}.{leaf}", slot
    return None


# fitting -------------------------------------------------------------------------------------------------------------

def fit(renamed: dict[str, torch.Tensor], parameters: dict[str, nn.Parameter]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors that fit a parameter of the model (see :func:`fit_tensor`), and ``name [shape]`` of the others."""
    fitted, misfits = {}, []
    for name, tensor in renamed.items():
        if name not in parameters:
            continue
        value = fit_tensor(tensor, parameters[name].shape)
        if value is None:
            misfits.append(f"{name} {list(tensor.shape)}")
        else:
            fitted[name] = value
    return fitted, misfits


def fit_tensor(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``tensor`` if it has ``shape``; a patch kernel ``[out, channels, p, p]`` summed over its channels (a grey
    image seen as equal RGB channels meets their sum), as a conv or as a linear kernel."""
    if tensor.shape == shape:
        return tensor
    if tensor.dim() == 4:
        grey = tensor.sum(dim=1, keepdim=True)
        for candidate in (grey, grey.flatten(1)):
            if candidate.shape == shape:
                return candidate
    return None


def check_encoder(file: Path, config: ModelConfig, parameters: dict[str, nn.Parameter],
                  renamed: dict[str, torch.Tensor], fitted: dict[str, torch.Tensor]) -> None:
    """CheckpointError unless the file's encoder fills every encoder parameter of the model and holds no more."""
    wanted = [name for name in parameters if name.startswith("encoder.")]
    problems = {
        "missing": [name for name in wanted if name not in renamed],
        "more than the model": [name for name in renamed if name.startswith("encoder.") and name not in parameters],
        "wrong shape": [f"{name} {list(renamed[name].shape)} here {list(parameters[name].shape)}"
                        for name in wanted if name in renamed and name not in fitted],
    }
    found = [f"{what} {', '.join(names[:NAMES_SHOWN])}{', ...' if len(names) > NAMES_SHOWN else ''}"
             for what, names in problems.items() if names]
    if found:
        raise CheckpointError(f"{file}: its encoder does not fit this model (width {config.width}, depth {config.depth}, "
                              f"patch {config.patch_size}): {'; '.join(found)}; nothing loaded")


def check_heads(file: Path, config: ModelConfig, hf_config: dict | None) -> None:
    """The same weights split into other heads compute something else: refuse them when the config says so."""
    heads = (hf_config or {}).get("num_attention_heads", config.heads)
    if heads != config.heads:
        raise CheckpointError(f"{file}: {heads} attention heads in the file, {config.heads} in this model; nothing loaded")


def position_notes(positions: dict[str, torch.Tensor], config: ModelConfig) -> tuple[list[str], torch.Tensor | None]:
    """What the file's position tables are (ours are recomputed for the model's grid), and its CLS position."""
    notes, cls_position = [], None
    widths = {ENCODER: config.width, DECODER: config.decoder_width}
    side = config.image_size // config.patch_size
    for part in (part for part in (ENCODER, DECODER) if part in positions):
        table = positions[part].reshape(-1, positions[part].shape[-1]).float()
        found = square_grid(table.shape[0])
        if found is None or table.shape[1] != widths[part]:
            notes.append(f"{part} position table {list(table.shape)} ignored (no square grid of this width)")
            continue
        grid, has_cls = found
        if part == ENCODER and has_cls:
            cls_position = table[:1].view(1, 1, -1)
        expected = sincos_2d(table.shape[1], grid, grid, config.position_layout)
        difference = (table[int(has_cls):] - expected).abs().max().item()
        if difference <= SINCOS_TOLERANCE:
            notes.append(f"{part} positions: {grid}×{grid} sin-cos in the file, recomputed for {side}×{side}")
        else:
            notes.append(f"{part} positions: the file's {grid}×{grid} table is not {config.position_layout} sin-cos "
                         f"(max difference {difference:.2g}); the model's fixed {side}×{side} table is used")
    return notes, cls_position


def square_grid(rows: int) -> tuple[int, bool] | None:
    """The side of the square patch grid a position table of ``rows`` rows covers, and whether a CLS row leads."""
    for has_cls in (False, True):
        side = math.isqrt(rows - has_cls)
        if side * side == rows - has_cls:
            return side, has_cls
    return None


def kernel_notes(renamed: dict[str, torch.Tensor]) -> list[str]:
    kernel = renamed.get("encoder.patch_embed.weight")
    if kernel is None or kernel.dim() != 4 or kernel.shape[1] == 1:
        return []
    return [f"patch kernel: {kernel.shape[1]} input channels summed to 1"]


def eps_notes(keys: KeyLayout, hf_config: dict | None) -> list[str]:
    eps = (hf_config or {}).get("layer_norm_eps", keys.layer_norm_eps)
    return [] if eps == LAYER_NORM_EPS else [f"LayerNorm eps stays {LAYER_NORM_EPS:g} (the file's model: {eps:g})"]


def _some(names: tuple[str, ...]) -> str:
    if not names:
        return ""
    return f" ({', '.join(names[:NAMES_SHOWN])}{', ...' if len(names) > NAMES_SHOWN else ''})"


# export --------------------------------------------------------------------------------------------------------------

def export_hf(model: nn.Module, out: str | Path) -> str:
    """Write ``model``'s encoder (and a vanilla MAE's decoder) as a Hugging Face ViTMAE folder ``out``, atomically.

    Returns the summary line. ``out`` must not exist yet (or be an empty folder).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists; choose a new folder")
    with_decoder = isinstance(model, MAE)
    architecture = "ViTMAEForPreTraining" if with_decoder else "ViTMAEModel"
    tensors, left = hf_tensors(model, with_decoder)
    with atomic_folder(out) as tmp:
        save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / HF_CONFIG, hf_config(model.config, architecture))
    return (f"export: {'encoder + MAE decoder' if with_decoder else 'encoder'} -> {out} (Hugging Face {architecture}, "
            f"{len(tensors)} tensors); left behind {len(left)}{_some(tuple(left))}; the study fusion between views "
            f"does not cross (ViTMAE sees each image alone)")


def hf_tensors(model: nn.Module, with_decoder: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hugging Face names -> tensors of what crosses, and our names of the parameters left behind."""
    prefix = HF_KEYS.encoder_prefix if with_decoder else ""
    tensors, left = {}, []
    for name, parameter in model.named_parameters():
        names = hf_names(name) if with_decoder or name.startswith("encoder.") else None
        if names is None:
            left.append(name)
            continue
        for hf_name, piece in zip(names, parameter.detach().cpu().chunk(len(names))):
            tensors[hf_name if hf_name.startswith("decoder.") else prefix + hf_name] = piece.clone()
    tensors[prefix + "embeddings.position_embeddings"] = with_cls_position(model.encoder.pos_embed)
    if with_decoder:
        tensors["decoder.decoder_pos_embed"] = with_cls_position(model.decoder_pos_embed)
    return tensors, left


def hf_names(ours: str) -> list[str] | None:
    """The Hugging Face name(s) of one of our parameters (a fused weight: its pieces in order), or None."""
    module, _, leaf = ours.rpartition(".")
    for hf, target in HF_NAMES.items():
        if target == ours:
            return [hf]
        if target == module:
            return [f"{hf}.{leaf}"]
    match = re.match(rf"({re.escape(ENCODER_BLOCKS)}|{DECODER_BLOCKS})\.(\d+)\.(.+)\.(weight|bias)$", ours)
    if match is None:
        return None
    blocks, index, part, leaf = match.groups()
    pieces = sorted((slot, hf) for hf, (inner, slot) in HF_BLOCK.items() if inner == part)
    return [f"{HF_EXPORT_BLOCKS[blocks]}.{index}.{hf}.{leaf}" for _, hf in pieces] or None


def with_cls_position(table: torch.Tensor) -> torch.Tensor:
    """A ``[L, C]`` position table as Hugging Face keeps it: ``[1, 1 + L, C]``, a zero row for the CLS first."""
    return torch.cat([table.new_zeros(1, table.shape[1]), table]).unsqueeze(0).cpu().clone()


def hf_config(config: ModelConfig, architecture: str) -> dict:
    """The ``config.json`` of a ViTMAE with this model's shapes (one grey channel, GELU, qkv bias, no dropout)."""
    return {
        "architectures": [architecture], "model_type": "vit_mae",
        "image_size": config.image_size, "patch_size": config.patch_size, "num_channels": 1,
        "hidden_size": config.width, "num_hidden_layers": config.depth, "num_attention_heads": config.heads,
        "intermediate_size": config.mlp_hidden, "hidden_act": "gelu", "qkv_bias": True,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": INIT_STD, "layer_norm_eps": LAYER_NORM_EPS,
        "decoder_hidden_size": config.decoder_width, "decoder_num_hidden_layers": config.decoder_depth,
        "decoder_num_attention_heads": config.decoder_heads, "decoder_intermediate_size": config.decoder_mlp_hidden,
        "mask_ratio": config.mask_ratio, "norm_pix_loss": config.norm_pix_loss,
    }
