"""CLIP model: shapes, normalisation, logit scale, end-of-text pooling, causality, gradient
checkpointing, parameter counts of the paper's sizes, config round trips."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from openwit.model.config import MODEL_CONFIGS, ModelConfig, TextConfig, VisionConfig, model_config  # noqa: E402
from openwit.model.loss import ClipLoss  # noqa: E402
from openwit.model.model import CLIP, build_model, count_parameters  # noqa: E402

EOT_ID = 2


def make_tokens(batch, config, seed=0, length=10):
    """Random caption-like ids: SOT, `length` tokens, EOT, zero padding."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, config.text.context_length, dtype=torch.long)
    tokens[:, 0] = 1
    tokens[:, 1 : length + 1] = torch.randint(3, config.text.vocab_size, (batch, length), generator=generator)
    tokens[:, length + 1] = EOT_ID
    return tokens


def make_images(batch, config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    return torch.randn(batch, 3, size, size, generator=generator)


@pytest.fixture(scope="module", params=["tiny", "tiny-resnet"])
def tiny_model(request) -> CLIP:
    torch.manual_seed(0)
    return build_model(request.param).eval()


def test_output_shapes_and_unit_norm(tiny_model):
    config = tiny_model.config
    with torch.no_grad():
        image_features, text_features, logit_scale = tiny_model(make_images(3, config), make_tokens(3, config))
    assert image_features.shape == (3, config.embed_dim)
    assert text_features.shape == (3, config.embed_dim)
    assert logit_scale.shape == ()
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(3))
    raw = tiny_model.encode_text(make_tokens(3, config), normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_logit_scale_starts_at_inverse_temperature_and_is_capped_at_100():
    model = build_model("tiny")
    config = model.config
    images, tokens = make_images(1, config), make_tokens(1, config)
    with torch.no_grad():
        assert model(images, tokens)[2].item() == pytest.approx(1 / 0.07)
        model.logit_scale.fill_(math.log(1000.0))
        assert model(images, tokens)[2].item() == pytest.approx(100.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    # At the cap the clamp still passes gradient, so the scale can come back down.
    _, _, scale = model(images, tokens)
    scale.backward()
    assert model.logit_scale.grad.item() > 0


def test_text_feature_is_read_at_the_end_of_text_token(tiny_model):
    config = tiny_model.config
    tokens = make_tokens(2, config, length=5)  # EOT at position 6
    after_eot = tokens.clone()
    after_eot[:, 7:] = torch.randint(3, config.text.vocab_size, (2, config.text.context_length - 7))
    before_eot = tokens.clone()
    before_eot[:, 3] += 1
    with torch.no_grad():
        features = tiny_model.encode_text(tokens)
        torch.testing.assert_close(tiny_model.encode_text(after_eot), features)
        assert not torch.allclose(tiny_model.encode_text(before_eot), features)
        # Only the first end-of-text counts.
        second_eot = tokens.clone()
        second_eot[:, 10] = EOT_ID
        torch.testing.assert_close(tiny_model.encode_text(second_eot), features)


def test_text_attention_is_causal(tiny_model):
    config = tiny_model.config
    tokens = make_tokens(2, config, length=20)
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % config.text.vocab_size
    with torch.no_grad():
        hidden = tiny_model.text.hidden_states(tokens)
        hidden_changed = tiny_model.text.hidden_states(changed)
    torch.testing.assert_close(hidden_changed[:, :12], hidden[:, :12])
    assert not torch.allclose(hidden_changed[:, 12:], hidden[:, 12:])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    config = model.config
    images, tokens = make_images(4, config), make_tokens(4, config)

    def loss_and_grads():
        model.zero_grad()
        loss = ClipLoss()(*model(images, tokens))
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    model.set_grad_checkpointing(True)
    assert all(t.grad_checkpointing for t in (model.visual.transformer, model.text.transformer))
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert grads.keys() == checkpointed_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("tiny-resnet").train()
    config = model.config
    images, tokens = make_images(8, config), make_tokens(8, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = ClipLoss()(*model(images, tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale_()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "name, expected",
    [
        # OpenAI's released ViT-B/32 has 151,277,313 parameters and RN50 102,007,137.
        ("vit-b-32", 151_277_313),
        ("rn50", 102_007_137),
    ],
)
def test_paper_sizes_have_the_papers_parameter_counts(name, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name)
    assert count_parameters(model) == expected


def test_vit_b_32_towers():
    with torch.device("meta"):
        model = build_model("vit-b-32")
    assert count_parameters(model.visual) == 87_849_216
    assert count_parameters(model.text) == 63_428_096
    assert model.text.token_embedding.weight.shape == (49408, 512)
    assert model.visual.positional_embedding.shape == (50, 768)  # 7 x 7 patches + class token


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_config_round_trips_through_a_dict_and_json(name):
    config = model_config(name)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_errors():
    with pytest.raises(KeyError, match="tiny"):
        model_config("nope")
    with pytest.raises(ValueError):
        VisionConfig(kind="vit", image_size=64, patch_size=10)
    with pytest.raises(ValueError):
        VisionConfig(kind="resnet", image_size=224, width=64, layers=(3, 4, 6), heads=32)
    with pytest.raises(ValueError):
        TextConfig(width=100, heads=8)
    with pytest.raises(TypeError):
        MODEL_CONFIGS["mine"] = model_config("tiny")  # the table is read-only
