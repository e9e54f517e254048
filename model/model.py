"""CLIP: an image tower and a text tower projected into one embedding space.

Reads top to bottom: the Transformer pieces shared by both towers, the Vision Transformer, the
paper's modified ResNet, the text Transformer, then `CLIP` and `build_model`.

Choices worth knowing (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", and its released code):
- Blocks are pre-LayerNorm residual attention + MLP with exact GELU (`nn.GELU`). The released
  OpenAI weights use QuickGELU, x * sigmoid(1.702 x), which only matters when loading them;
  this package trains from scratch, and exact GELU is as good and has fused kernels.
- Tensors are batch first, [batch, tokens, width]; attention is
  `F.scaled_dot_product_attention`, so PyTorch picks the flash / memory-efficient kernels.
- The text representation is the hidden state at the first end-of-text token, found by its id
  (`TextConfig.eot_id`), not by "the highest token id" as OpenAI's tokenizer allows: our
  tokenizer's special tokens have small ids. A row with no end-of-text token is read at
  position 0 (start-of-text); the tokenizer never produces one.
- `logit_scale` is a learned temperature, initialised to log(1 / 0.07). `forward` clamps it so
  its exp() is at most 100; call `clamp_logit_scale_()` after each optimizer step as well, so
  the parameter itself never sits above the cap where the clamp passes it no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from openwit.model.config import ModelConfig, TextConfig, VisionConfig, model_config

MAX_LOGIT_SCALE = 100.0
INITIAL_TEMPERATURE = 0.07


# ---------------------------------------------------------------------------------------------
# Transformer pieces (shared by the ViT and the text tower)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, tokens, width = x.shape
        # [batch, tokens, 3 * width] -> three of [batch, heads, tokens, head_dim]
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        self.causal = causal
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=self.causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        self.width = width
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, causal) for _ in range(layers))
        self.grad_checkpointing = False
        self.init_parameters()

    def init_parameters(self) -> None:
        # The paper's text-tower scheme, used here for both towers: attention inputs at
        # width^-1/2, the MLP's first layer at (2 width)^-1/2, and the two projections back into
        # the residual stream shrunk by (2 layers)^-1/2 so the stream's variance does not grow
        # with depth.
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        proj_std = self.width**-0.5 * (2 * len(self.blocks)) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.normal_(block.attn.out.weight, std=proj_std)
            nn.init.normal_(block.mlp.fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.proj.weight, std=proj_std)
            for linear in (block.attn.qkv, block.attn.out, block.mlp.fc, block.mlp.proj):
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Keep only each block's input; recompute its activations during backward.
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


# ---------------------------------------------------------------------------------------------
# Image tower 1: Vision Transformer


class VisionTransformer(nn.Module):
    """Patches -> [class token; patch tokens] + positions -> ln_pre -> blocks -> ln_post(class) -> proj."""

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__()
        width = config.width
        grid = config.image_size // config.patch_size
        # A strided convolution is a linear map of each non-overlapping patch.
        self.patch_embed = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, causal=False)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # [batch, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [batch, grid * grid, width]
        class_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


# ---------------------------------------------------------------------------------------------
# Image tower 2: the paper's modified ResNet


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 x4) whose strided steps are an average pool followed
    by stride-1 convolutions: the pool low-passes before subsampling (anti-aliasing)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        return self.relu(out + self.downsample(x))


class AttentionPool2d(nn.Module):
    """Replaces global average pooling: one attention step whose query is the mean of the
    feature map, over the map's cells (plus the mean itself) with learned positions."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) / width**0.5)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(linear.weight, std=linear.in_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, width = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [batch, cells, width]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, t.shape[1], self.heads, width // self.heads).transpose(1, 2)

        q = split_heads(self.q_proj(x[:, :1]))  # only the mean token asks
        k, v = split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v)  # [batch, heads, 1, head_dim]
        return self.c_proj(y.transpose(1, 2).reshape(batch, width))


class ModifiedResNet(nn.Module):
    """The paper's ResNet: a three-convolution stem with an average pool instead of a max pool,
    anti-aliased strided bottlenecks, and an attention pool instead of global average pooling."""

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__()
        width = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
        )
        stages = []
        in_channels = width
        for index, depth in enumerate(config.layers):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            blocks = [Bottleneck(in_channels, planes, stride)]
            in_channels = planes * Bottleneck.expansion
            blocks += [Bottleneck(in_channels, planes, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.attnpool = AttentionPool2d(config.image_size // 32, in_channels, config.heads, embed_dim)
        for module in self.modules():
            if isinstance(module, Bottleneck):
                # Each residual branch starts as zero, so the network starts near identity paths.
                nn.init.zeros_(module.bn3.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self.stages(self.stem(images)))


# ---------------------------------------------------------------------------------------------
# Text tower


class TextTransformer(nn.Module):
    """Tokens + positions -> causal pre-norm blocks -> ln_final -> state at end-of-text -> proj."""

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__()
        self.eot_id = config.eot_id
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio, causal=True)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=config.width**-0.5)

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, tokens] ids -> [batch, tokens, width] after the final LayerNorm."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        return self.ln_final(self.transformer(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hidden_states(tokens)
        # argmax returns the first maximum: the first end-of-text token of each row.
        eot_position = (tokens == self.eot_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot_position] @ self.text_projection


# ---------------------------------------------------------------------------------------------
# CLIP


class CLIP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.vision.kind == "vit":
            self.visual: nn.Module = VisionTransformer(config.vision, config.embed_dim)
        else:
            self.visual = ModifiedResNet(config.vision, config.embed_dim)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE)))

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute Transformer block activations in backward (both towers' blocks; a ResNet
        image tower is left as is, since recomputing BatchNorm would update its statistics twice)."""
        for module in self.modules():
            if isinstance(module, Transformer):
                module.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[batch, 3, image_size, image_size] normalised pixels -> [batch, embed_dim]."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[batch, context_length] token ids -> [batch, embed_dim]."""
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit-norm image and text features and the (clamped) logit scale, ready for ClipLoss."""
        logit_scale = self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        return self.encode_image(images), self.encode_text(tokens), logit_scale

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the parameter in place to [0, log 100]; call after each optimizer step."""
        self.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))


def build_model(config: ModelConfig | str) -> CLIP:
    """A freshly initialised CLIP of the given size (a ModelConfig or a name in MODEL_CONFIGS)."""
    return CLIP(model_config(config) if isinstance(config, str) else config)


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
