"""Model sizes as small frozen dataclasses with names.

A checkpoint is a plain dict; `ModelConfig.to_dict()` gives JSON-compatible data that
`ModelConfig.from_dict()` turns back into the same config, so a checkpoint carries its own size.

The named sizes follow the CLIP paper (Radford et al. 2021, tables 19-20) where one exists:
`vit-b-32` and `rn50` are the paper's ViT-B/32 and RN50; `tiny` and `tiny-resnet` train on a
CPU in minutes and exist for tests and the demo corpus.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The image tower.

    kind="vit": a Vision Transformer; `layers` is the number of blocks, `width` the model
    dimension, `heads` the attention heads, `patch_size` the square patch side in pixels.
    kind="resnet": CLIP's modified ResNet; `layers` is the number of bottleneck blocks in each
    of the four stages, e.g. (3, 4, 6, 3) for ResNet-50, `width` the stem width (64 for the
    paper's ResNets), `heads` the heads of the attention pool, and `patch_size` is unused.
    """

    kind: str = "vit"
    image_size: int = 224
    width: int = 768
    layers: int | tuple[int, ...] = 12
    heads: int = 12
    patch_size: int = 32
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.kind == "vit":
            if not isinstance(self.layers, int):
                raise ValueError(f"a ViT takes an int number of layers, got {self.layers!r}")
            if self.image_size % self.patch_size:
                raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
            if self.width % self.heads:
                raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        elif self.kind == "resnet":
            if isinstance(self.layers, int) or len(self.layers) != 4:
                raise ValueError(f"a ResNet takes four stage depths, e.g. (3, 4, 6, 3), got {self.layers!r}")
            # The stem halves the image three times (two strided steps and a pool) and the
            # stages three more: the attention pool then sees image_size / 32 squared cells.
            if self.image_size % 32:
                raise ValueError(f"a ResNet needs image_size divisible by 32, got {self.image_size}")
            if (self.width * 32) % self.heads:
                raise ValueError(f"the attention pool width {self.width * 32} is not a multiple of heads {self.heads}")
        else:
            raise ValueError(f"vision kind must be 'vit' or 'resnet', got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text tower: a causal Transformer over BPE tokens.

    `eot_id` is the id of the end-of-text token; the text representation is the hidden state at
    its first occurrence. `model.tokenizer.Tokenizer` always gives it id 2 (0 is padding, 1 is
    start-of-text), whatever the vocabulary size.
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    eot_id: int = 2

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not a multiple of heads {self.heads}")
        if not 0 <= self.eot_id < self.vocab_size:
            raise ValueError(f"eot_id {self.eot_id} is outside the vocabulary of {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A named CLIP size: both towers project into a shared `embed_dim`-dimensional space."""

    name: str
    embed_dim: int
    vision: VisionConfig
    text: TextConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (tuples become lists) for a checkpoint or a JSON file."""
        data = dataclasses.asdict(self)
        layers = data["vision"]["layers"]
        if isinstance(layers, tuple):
            data["vision"]["layers"] = list(layers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        vision = dict(data["vision"])
        if isinstance(vision["layers"], list):
            vision["layers"] = tuple(vision["layers"])
        return cls(
            name=data["name"],
            embed_dim=data["embed_dim"],
            vision=VisionConfig(**vision),
            text=TextConfig(**data["text"]),
        )


def _named(*configs: ModelConfig) -> Mapping[str, ModelConfig]:
    # A read-only view: the table of sizes is a constant, not something to register into.
    return types.MappingProxyType({config.name: config for config in configs})


MODEL_CONFIGS: Mapping[str, ModelConfig] = _named(
    ModelConfig(
        name="tiny",
        embed_dim=128,
        vision=VisionConfig(kind="vit", image_size=64, patch_size=8, width=192, layers=4, heads=3),
        text=TextConfig(vocab_size=8192, width=128, heads=2, layers=3),
    ),
    ModelConfig(
        name="tiny-resnet",
        embed_dim=128,
        # Attention pool width is 32 x 16 = 512 with 8 heads of 64, as in the paper's ResNets.
        vision=VisionConfig(kind="resnet", image_size=64, width=16, layers=(1, 1, 1, 1), heads=8),
        text=TextConfig(vocab_size=8192, width=128, heads=2, layers=3),
    ),
    ModelConfig(
        name="vit-b-32",
        embed_dim=512,
        vision=VisionConfig(kind="vit", image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=TextConfig(vocab_size=49408, width=512, heads=8, layers=12),
    ),
    ModelConfig(
        name="vit-b-16",
        embed_dim=512,
        vision=VisionConfig(kind="vit", image_size=224, patch_size=16, width=768, layers=12, heads=12),
        text=TextConfig(vocab_size=49408, width=512, heads=8, layers=12),
    ),
    ModelConfig(
        name="rn50",
        embed_dim=1024,
        # The paper's ResNets use width * 32 / 64 attention-pool heads: 32 for RN50.
        vision=VisionConfig(kind="resnet", image_size=224, width=64, layers=(3, 4, 6, 3), heads=32),
        text=TextConfig(vocab_size=49408, width=512, heads=8, layers=12),
    ),
)


def model_config(name: str) -> ModelConfig:
    """The named size; raises KeyError listing the known names."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_CONFIGS)}") from None
