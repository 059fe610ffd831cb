"""PaLI-3 (``pali3_edu.pali3``): equal to the same assembly of ``transformers`` parts, masks,
the answer-only loss, prediction from PIL images, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import SiglipVisionConfig, SiglipVisionModel

from pali3_edu.convert import t5_from_hf, vit_from_hf
from pali3_edu.pali3 import PaLI3, PaLI3Config, answer_labels, clean_answer

TOL = dict(rtol=1e-5, atol=1e-5)
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
T5 = dict(vocab_size=80, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=20,
          feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
          decoder_start_token_id=0)


@pytest.fixture(scope="module")
def hf_parts():
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(**VISION)).eval()
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5)).eval()
    with torch.no_grad():  # transformers 5 keeps lm_head tied in memory: give it its own weights
        t5.lm_head.weight = torch.nn.Parameter(torch.randn(T5["vocab_size"], T5["d_model"]))
    projector = torch.nn.Linear(VISION["hidden_size"], T5["d_model"])
    return vision, projector, t5


def _inputs(batch: int = 3, prompt: int = 7, answer: int = 6):
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    ids = torch.randint(2, T5["vocab_size"], (batch, prompt), generator=g)
    mask = torch.ones(batch, prompt, dtype=torch.long)
    mask[1, 4:] = 0  # a padded prompt
    labels = torch.randint(2, T5["vocab_size"], (batch, answer), generator=g)
    labels[2, 3:] = -100  # a short answer
    return pixels, ids, mask, labels


def test_equals_the_transformers_assembly(hf_parts):
    vision, projector, t5 = hf_parts
    ours = PaLI3.from_parts(vit_from_hf(vision), projector, t5_from_hf(t5)).eval()
    pixels, ids, mask, labels = _inputs()
    with torch.no_grad():
        out = ours(pixels, ids, attention_mask=mask, labels=labels)
        visual = projector(vision(pixel_values=pixels).last_hidden_state)
        embeds = torch.cat([visual, t5.shared(ids)], dim=1)
        keep = torch.cat([torch.ones(3, visual.shape[1], dtype=torch.long), mask], dim=1)
        ref = t5(inputs_embeds=embeds, attention_mask=keep, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)
    torch.testing.assert_close(out.loss, ref.loss, **TOL)
    assert out.encoder_mask[:, : visual.shape[1]].all()  # image tokens are never masked


def test_prompt_padding_is_masked(hf_parts):
    """A padded prompt gives the same answer logits whatever the padding holds or how long it is."""
    vision, projector, t5 = hf_parts
    model = PaLI3.from_parts(vit_from_hf(vision), projector, t5_from_hf(t5)).eval()
    pixels, ids, mask, labels = _inputs()
    noisy = ids.clone()
    noisy[1, 4:] = 5
    longer = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = model(pixels, ids, mask, labels=labels).logits
        b = model(pixels, noisy, mask, labels=labels).logits
        c = model(pixels, longer, longer_mask, labels=labels).logits
        d = model(pixels, ids, None, labels=labels).logits  # no mask: row 1's padding is read
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(a, c, **TOL)
    assert not torch.allclose(a[1], d[1], atol=1e-4)
    torch.testing.assert_close(a[0], d[0], **TOL)


def test_loss_is_on_answer_tokens_only():
    torch.manual_seed(0)
    model = PaLI3(PaLI3Config()).eval()
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    ids = torch.randint(3, 500, (2, 6))
    labels = torch.randint(3, 500, (2, 5))
    labels[0, 2:] = -100
    with torch.no_grad():
        out = model(pixels, ids, labels=labels)
        logp = out.logits.log_softmax(-1)
    real = labels != -100
    manual = -logp[real].gather(-1, labels[real][:, None]).mean()
    torch.testing.assert_close(out.loss, manual, **TOL)
    # what sits at ignored positions never matters
    other = labels.clone()
    other[0, 2:] = -100
    assert torch.equal(labels, other)


def test_answer_labels_pad_with_ignore_index():
    from pali3_edu.tokenizer import course_tokenizer

    tok = course_tokenizer()
    labels = answer_labels(tok, ["red", "a large blue circle"], max_len=16)
    assert (labels[0] == -100).sum() > 0 and (labels[1] != -100).all()
    assert labels[0][labels[0] != -100][-1] == tok.eos_id  # the answer ends with EOS


def test_predict_takes_pil_images_of_any_size():
    torch.manual_seed(0)
    model = PaLI3(PaLI3Config()).eval()
    images = [Image.new("RGB", (100, 70), (200, 10, 10)), np.zeros((64, 64, 3), dtype=np.uint8),
              Image.new("L", (30, 30))]
    answers = model.predict(images, "caption en", max_new_tokens=5)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert all("<pad>" not in a and "</s>" not in a for a in answers)
    beam = model.predict(images[:1], ["answer en what color is it?"], max_new_tokens=5,
                         strategy="beam", num_beams=2)
    assert len(beam) == 1
    with pytest.raises(ValueError, match="one prompt, or one per image"):
        model.predict(images, ["a", "b"])


def test_clean_answer():
    assert clean_answer("<pad> red</s><pad><pad>") == "red"
    assert clean_answer("<loc0001><loc0002><loc0003><loc0004> circle</s> junk") == \
        "<loc0001><loc0002><loc0003><loc0004> circle"


def test_bad_input_gets_a_clear_error():
    model = PaLI3(PaLI3Config())
    pixels, ids = torch.zeros(2, 3, 64, 64), torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="resize them"):
        model(torch.zeros(2, 3, 32, 32), ids, labels=ids)
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        model(pixels, torch.ones(3, 5, dtype=torch.long), labels=ids)
    with pytest.raises(ValueError, match="longer than max_prompt_len"):
        model(pixels, torch.ones(2, 100, dtype=torch.long), labels=ids)
    with pytest.raises(ValueError, match="outside"):
        model(pixels, torch.full((2, 5), 10**6), labels=ids)
    with pytest.raises(TypeError, match="float"):
        model(pixels.to(torch.uint8), ids, labels=ids)
    with pytest.raises(TypeError, match="predict"):
        model([Image.new("RGB", (64, 64))], ids, labels=ids)
    with pytest.raises(ValueError, match="shorten"):
        model.predict([Image.new("RGB", (64, 64))], "answer en " + "why " * 60)
    with pytest.raises(TypeError, match="ViT"):
        PaLI3.from_parts(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), model.encdec)


def test_resolution_increase_keeps_the_model_working():
    torch.manual_seed(0)
    model = PaLI3(PaLI3Config()).eval()
    ids = torch.ones(1, 4, dtype=torch.long)
    model.set_image_size(128)
    assert model.image_size == 128 and model.cfg.num_visual_tokens == 256
    out = model(torch.zeros(1, 3, 128, 128), ids, labels=ids)
    assert out.encoder_states.shape[1] == 256 + 4
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="128x128"):
        model(torch.zeros(1, 3, 64, 64), ids, labels=ids)


def test_gradients_reach_all_three_parts():
    torch.manual_seed(0)
    model = PaLI3(PaLI3Config())
    ids = torch.randint(3, 500, (2, 4))
    model(torch.rand(2, 3, 64, 64) * 2 - 1, ids, labels=ids).loss.backward()
    for part in (model.vit, model.projector, model.encdec):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert F.mse_loss is not None
