"""Import of transformers SigLIP weights (random small configs, no download) gives the same numbers.

``transformers`` is a test dependency: without it these tests fail (they never skip).
"""

import pytest
import torch
from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

from pali3_edu.convert import siglip_from_hf, vit_from_hf

TEXT = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12, bos_token_id=None, eos_token_id=1, pad_token_id=1)
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    with torch.no_grad():  # transformers initialises both to 0; give them non-trivial values
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.0)
    return model


def inputs(b=3):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 100, (b, 12), generator=g)


def test_siglip_from_hf_matches(hf_model):
    ours = siglip_from_hf(hf_model).eval()
    px, ids = inputs()
    with torch.no_grad():
        ref = hf_model(input_ids=ids, pixel_values=px, return_loss=True)
        out = ours(px, ids)
        tokens, pooled = ours.encode_image(px)
        text = ours.encode_text(ids)
        vision = ours.vision(px)
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, ref.vision_model_output.last_hidden_state, **close)
    torch.testing.assert_close(pooled, ref.vision_model_output.pooler_output, **close)
    torch.testing.assert_close(vision.tokens, tokens)
    torch.testing.assert_close(vision.pooled, pooled)
    torch.testing.assert_close(text, ref.text_model_output.pooler_output, **close)
    torch.testing.assert_close(out.image_emb, ref.image_embeds, **close)
    torch.testing.assert_close(out.text_emb, ref.text_embeds, **close)
    torch.testing.assert_close(out.logits, ref.logits_per_image, **close)
    torch.testing.assert_close(out.loss, ref.loss, **close)
    assert ours.t_prime.item() == 2.0 and ours.bias.item() == -3.0


def test_vit_from_hf_matches():
    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(**VISION)).eval()
    vit = vit_from_hf(hf).eval()
    assert vit.cfg.posemb_resize == "bilinear"  # the course's default (big_vision's choice)
    px = inputs()[0]
    with torch.no_grad():
        ref = hf(pixel_values=px)
        out = vit(px)
    torch.testing.assert_close(out.tokens, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_set_image_size_bicubic_equals_hf_interpolate_pos_encoding():
    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(**VISION)).eval()
    big = torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        ref = hf(pixel_values=big, interpolate_pos_encoding=True)
    vit = vit_from_hf(hf, posemb_resize="bicubic").eval()
    vit.set_image_size(48)  # 4x4 -> 6x6 position grid, once
    assert vit.cfg.image_size == 48 and vit.posemb.shape == (1, 36, 64)
    with torch.no_grad():
        out = vit(big)
    torch.testing.assert_close(out.tokens, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-5, rtol=1e-5)
    # bilinear (big_vision) is a different interpolation: same shapes, other numbers
    bilinear = vit_from_hf(hf).eval()
    bilinear.set_image_size(48)
    with torch.no_grad():
        assert not torch.allclose(bilinear(big).tokens, ref.last_hidden_state, atol=1e-4)


def test_vision_model_without_head():
    hf = SiglipVisionModel(SiglipVisionConfig(**VISION, vision_use_head=False)).eval()
    vit = vit_from_hf(hf).eval()
    px = inputs()[0]
    with torch.no_grad():
        out = vit(px)
        ref = hf(pixel_values=px).last_hidden_state
    assert out.pooled is None
    torch.testing.assert_close(out.tokens, ref, atol=1e-5, rtol=1e-5)


def test_unsupported_activation_is_a_clear_error():
    hf = SiglipVisionModel(SiglipVisionConfig(**VISION, hidden_act="relu"))
    with pytest.raises(NotImplementedError, match="tanh-approximate GELU"):
        vit_from_hf(hf)
