"""Model configuration: the original size presets (SPEC §3) and the options of both schemes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .vit import MAE_LAYOUT, POSITION_LAYOUTS, ROW_FIRST_LAYOUT

SCHEMES = ("vanilla", "diffusion")
DECODERS = ("joint", "cross", "cross-self")
SCHEDULES = ("cosine", "linear", "seed")
NUM_LABELS = 14

PRESET_FIELDS = ("patch_size", "image_size", "width", "depth", "heads", "mlp_hidden",
                 "decoder_width", "decoder_depth", "decoder_heads", "decoder_mlp_hidden", "mask_ratio")
PRESET_TABLE = {
    #     patch image width depth heads   MLP  dec width  depth  heads  dec MLP  mask ratio
    "xs": (32,   256,  256,   6,    8,  1024,       128,     2,     4,     512,  0.5),
    "s":  (32,   256,  768,   6,   12,  3072,       512,     4,    16,    2048,  0.75),
    "b":  (16,   256,  768,  12,   12,  3072,       512,     8,    16,    2048,  0.5),
}
PRESETS = {name: dict(zip(PRESET_FIELDS, row)) for name, row in PRESET_TABLE.items()}
RUNTIME_FIELDS = ("grad_checkpoint",)  # how a model runs, not its weights: a checkpoint loads whatever they are


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (``create(**config.to_dict())`` gives the same architecture).

    ``decoder``, ``schedule``, ``timesteps`` (``None``: the schedule's own) and ``time_embedding`` are
    DiffMAE options; ``norm_pix_loss`` is the vanilla MAE's. ``drop_path`` is the stochastic-depth rate of
    the encoder's last block (0 for the first, linear in between; decoders have none).

    ``grad_checkpoint`` (activation checkpointing) changes how the model runs, not its weights or results:
    while training with gradients on, every transformer block (encoder and decoder) keeps only its input
    and recomputes its activations in the backward pass (about a third more time, far less memory; for
    512² and 1024² images). It is one of :data:`RUNTIME_FIELDS`.
    """

    preset: str
    scheme: str
    patch_size: int
    image_size: int
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    decoder_mlp_hidden: int
    mask_ratio: float
    norm_pix_loss: bool = True
    decoder: str = "cross-self"
    schedule: str = "cosine"
    timesteps: int | None = None
    time_embedding: bool = True
    num_labels: int = NUM_LABELS
    drop_path: float = 0.0
    label_names: tuple[str, ...] = ()  # the head's outputs, in order; () for pretraining (and older models)
    grad_checkpoint: bool = False  # recompute block activations in the backward pass (not saved by older models)
    position_layout: str = MAE_LAYOUT  # channel order of the sin-cos tables; saved without it: row-first (saved_config)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))  # JSON gives a list
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(f"{len(self.label_names)} label names for a head of {self.num_labels} labels")
        _check_choice("scheme", self.scheme, SCHEMES)
        _check_choice("position_layout", self.position_layout, POSITION_LAYOUTS)
        _check_choice("decoder", self.decoder, DECODERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads in ((self.width, self.heads), (self.decoder_width, self.decoder_heads)):
            if width % heads or width % 4:
                raise ValueError(f"width {width} must be a multiple of 4 and of its {heads} heads")
        patches = (self.image_size // self.patch_size) ** 2
        kept = int(patches * (1.0 - self.mask_ratio))
        if not 0 < kept < patches:
            raise ValueError(f"mask_ratio {self.mask_ratio} must leave at least one visible and one masked patch")
        if self.timesteps is not None and self.timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, not {self.timesteps}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), not {self.drop_path}")

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (``label_names`` as a list)."""
        return {**asdict(self), "label_names": list(self.label_names)}


def saved_config(values: dict) -> ModelConfig:
    """The configuration saved as ``values`` (checkpoint metadata, a run's ``config.json``).

    Models saved before ``position_layout`` was recorded put the row in the first half of the channels:
    without the field they keep that layout, so they load and give the same outputs as before.
    """
    return ModelConfig(**{"position_layout": ROW_FIRST_LAYOUT, **values})


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def model_config(preset: str = "xs", scheme: str = "vanilla", **overrides) -> ModelConfig:
    """The preset's configuration with ``overrides`` (any :class:`ModelConfig` field) applied."""
    _check_choice("preset", preset, tuple(PRESETS))
    known = {field.name for field in fields(ModelConfig)} - {"preset", "scheme"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(ModelConfig(preset=preset, scheme=scheme, **PRESETS[preset]), **overrides)
