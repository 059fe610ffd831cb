"""SigLIP two-tower model: public surface, text tower behaviour, init values, a tiny training run."""

import dataclasses
import math

import pytest
import torch

from pali3_edu.config import SigLIPConfig, TextConfig, ViTConfig, get_config
from pali3_edu.siglip import SigLIP, SigLIPOutput, TextOutput, TextTransformer, sigmoid_loss, softmax_loss

CFG = SigLIPConfig(
    vision=ViTConfig(image_size=16, patch_size=8, width=32, depth=1, mlp_dim=64, heads=4),
    text=TextConfig(vocab_size=50, max_len=6, width=32, depth=1, mlp_dim=64, heads=4),
    embed_dim=32,
)


def batch(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 16, 16, generator=g) * 2 - 1, torch.randint(0, 50, (b, 6), generator=g)


def test_public_surface():
    torch.manual_seed(0)
    model = SigLIP(CFG)
    px, ids = batch(3)
    tokens, pooled = model.encode_image(px)
    assert tokens.shape == (3, 4, 32) and pooled.shape == (3, 32)
    text = model.encode_text(ids)
    assert text.shape == (3, 32)
    assert not torch.allclose(text.norm(dim=-1), torch.ones(3))  # unnormalised, like transformers
    out = model(px, ids)
    assert isinstance(out, SigLIPOutput)
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.image_emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.loss, sigmoid_loss(out.image_emb, out.text_emb, model.t_prime, model.bias))
    with pytest.raises(TypeError):  # a plain dataclass: attributes, not dict keys
        out["loss"]
    torch.testing.assert_close(out.logits, model.t_prime.exp() * out.image_emb @ out.text_emb.T + model.bias)
    soft = model(px, ids, loss="softmax").loss
    torch.testing.assert_close(soft, softmax_loss(out.image_emb, out.text_emb, model.t_prime))
    # zero-shot style: 2 images against 5 prompts gives (2, 5) logits and no loss
    out = model(px[:2], batch(5, 1)[1], loss="none")
    assert out.logits.shape == (2, 5) and out.loss is None


def test_init_values_and_sanity_loss():
    model = SigLIP(get_config("siglip", "tiny-cpu"))
    assert model.t_prime.shape == () and model.bias.shape == ()
    assert math.isclose(model.t_prime.item(), math.log(10), rel_tol=1e-6)
    assert model.bias.item() == -10.0
    px, ids = batch(8)
    px = torch.nn.functional.interpolate(px, size=64)
    ids = torch.randint(0, 1792, (8, 24))
    with torch.no_grad():
        loss = model(px, ids).loss.item()
    # at init (t = 10, b = -10) the positives cost ≈ 10 each and the negatives almost nothing: loss ≈ 10
    assert 8.0 < loss < 12.5


def test_text_tower_is_bidirectional_and_pools_the_last_token():
    torch.manual_seed(0)
    tower = TextTransformer(CFG.text, 32).eval()
    ids = torch.randint(0, 50, (2, 6))
    out = tower(ids)
    assert isinstance(out, TextOutput) and out.tokens.shape == (2, 6, 32)
    torch.testing.assert_close(out.pooled, tower.head(out.tokens[:, -1]))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50
    # no causal mask: changing the last token changes the first position's output
    assert not torch.allclose(tower(changed).tokens[:, 0], out.tokens[:, 0])
    # shorter input uses the first positions
    assert tower(ids[:, :4]).pooled.shape == (2, 32)


def test_input_errors():
    model = SigLIP(CFG)
    with pytest.raises(ValueError, match="max_len"):
        model.encode_text(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model.encode_text(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="batch, seq"):
        model.encode_text(torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="pooled"):
        SigLIP(dataclasses.replace(CFG, vision=dataclasses.replace(CFG.vision, pool="none")))
    with pytest.raises(ValueError, match="loss"):
        model(*batch(2), loss="hinge")


def test_text_ids_out_of_range_are_a_clear_error():
    model = SigLIP(CFG)  # vocab_size 50
    for bad in (torch.tensor([[1, 2, 50]]), torch.tensor([[-1, 2, 3]])):
        with pytest.raises(ValueError, match=r"outside \[0, 50\).*vocab_size"):
            model.encode_text(bad)
    assert model.encode_text(torch.tensor([[0, 49]])).shape == (1, 32)  # both ends of the range


def test_empty_text_is_a_clear_error():
    model = SigLIP(CFG)
    with pytest.raises(ValueError, match="no tokens"):
        model.encode_text(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokens"):
        model(batch(2)[0], torch.zeros(2, 0, dtype=torch.long))


def test_batch_size_mismatch_raises_when_a_loss_is_asked_for():
    model = SigLIP(CFG)
    px, _ = batch(3)
    ids = batch(5, 1)[1]
    for kind in ("sigmoid", "softmax"):
        with pytest.raises(ValueError, match=r"3 images but 5 texts.*loss='none'"):
            model(px, ids, loss=kind)
    assert model(px, ids, loss="none").logits.shape == (3, 5)


def test_reset_parameters_restores_the_init():
    torch.manual_seed(0)
    model = SigLIP(dataclasses.replace(CFG, embed_dim=16))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    model.reset_parameters()
    assert math.isclose(model.t_prime.item(), math.log(10), rel_tol=1e-6) and model.bias.item() == -10.0
    text = model.text
    assert abs(text.token_embed.weight.std().item() * 32**0.5 - 1) < 0.1
    assert abs(text.posemb.std().item() * 32**0.5 - 1) < 0.3  # only 6 × 32 values
    assert text.head.bias.abs().max() == 0 and model.image_proj.bias.abs().max() == 0
    assert abs(model.image_proj.weight.std().item() * 32**0.5 - 1) < 0.2  # LeCun normal
    assert not any((p == 0.5).all() for p in model.parameters())  # every parameter was re-initialised


def test_embed_dim_different_from_vit_width_adds_a_projection():
    cfg = dataclasses.replace(CFG, embed_dim=16)
    model = SigLIP(cfg)
    assert model.encode_image(batch(2)[0])[1].shape == (2, 16)
    assert model.encode_text(batch(2)[1]).shape == (2, 16)


def test_tiny_training_run_fits_pairs():
    torch.manual_seed(0)
    model = SigLIP(CFG)
    px, ids = batch(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model(px, ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(px, ids)
    assert out.loss.item() < 0.5 * first
    assert (out.logits.argmax(1) == torch.arange(8)).float().mean() >= 0.75
