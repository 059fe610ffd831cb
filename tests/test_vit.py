"""Vision transformer: patches, position embeddings, blocks, heads, input checks."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from pali3_edu.config import ViTConfig, get_config
from pali3_edu.vit import (
    MAPHead,
    ViT,
    ViTAttention,
    ViTBlock,
    ViTOutput,
    patchify,
    resize_posemb,
    sincos_2d_posemb,
)

TINY = ViTConfig(image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64, heads=4)


def test_patchify_layout():
    img = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    p = patchify(img, 4)
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) is the 4x4 block at rows 4..7, cols 8..11, flattened (row, col, channel)
    block = img[:, :, 4:8, 8:12]
    assert torch.equal(p[:, 1 * 3 + 2], rearrange(block, "b c h w -> b (h w c)"))


def test_conv_equals_patchify_linear():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=4, stride=4)
    x = torch.randn(2, 3, 16, 16)
    want = rearrange(conv(x), "b d h w -> b (h w) d")
    weight = rearrange(conv.weight, "d c p1 p2 -> d (p1 p2 c)")
    got = F.linear(patchify(x, 4), weight, conv.bias)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_patchify_errors():
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.zeros(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="batch"):
        patchify(torch.zeros(3, 8, 8), 4)


def test_sincos_posemb():
    pe = sincos_2d_posemb(3, 5, 16)
    assert pe.shape == (1, 15, 16)
    q = 4
    # position (0, 0): sin parts 0, cos parts 1
    assert torch.allclose(pe[0, 0], torch.tensor([0.0] * q + [1.0] * q + [0.0] * q + [1.0] * q))
    # position (row 1, col 2) at the highest frequency (omega = 1): sin(x=2), cos(x=2), sin(y=1)
    row = pe[0, 1 * 5 + 2]
    assert math.isclose(row[0].item(), math.sin(2), abs_tol=1e-6)
    assert math.isclose(row[q].item(), math.cos(2), abs_tol=1e-6)
    assert math.isclose(row[2 * q].item(), math.sin(1), abs_tol=1e-6)
    assert torch.cdist(pe[0], pe[0]).fill_diagonal_(1).min() > 1e-3  # all positions distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_posemb(2, 2, 10)


def test_resize_posemb_bilinear_ramp():
    # a ramp along columns survives bilinear resizing (align_corners=False, clamped at the border)
    old, new = 4, 8
    cols = torch.arange(old, dtype=torch.float32)
    grid = cols[None, :].expand(old, old)  # value = column index
    posemb = rearrange(grid, "h w -> 1 (h w) 1").repeat(1, 1, 2)
    out = resize_posemb(posemb, new, "bilinear")
    assert out.shape == (1, new * new, 2)
    src = ((torch.arange(new) + 0.5) * old / new - 0.5).clamp(0, old - 1)
    torch.testing.assert_close(rearrange(out[..., 0], "1 (h w) -> h w", h=new)[0], src)
    assert resize_posemb(posemb, old) is posemb
    bicubic = resize_posemb(posemb, new, "bicubic")
    assert not torch.allclose(bicubic, out)
    with pytest.raises(ValueError, match="bilinear"):
        resize_posemb(posemb, new, "nearest")
    with pytest.raises(ValueError, match="square"):
        resize_posemb(torch.zeros(1, 6, 2), 4)
    assert resize_posemb(torch.zeros(1, 6, 2), (4, 6), old_grid=(2, 3)).shape == (1, 24, 2)


@pytest.mark.parametrize("pool", ["map", "gap", "none"])
@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_vit_shapes(pool, posemb):
    vit = ViT(dataclasses.replace(TINY, pool=pool, posemb=posemb))
    out = vit(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert isinstance(out, ViTOutput)
    tokens, pooled = out.tokens, out.pooled
    assert tokens.shape == (2, 16, 32)
    if pool == "none":
        assert pooled is None
    else:
        assert pooled.shape == (2, 32)
    if pool == "gap":
        torch.testing.assert_close(pooled, tokens.mean(1))


def test_vit_input_errors_say_what_to_do():
    vit = ViT(TINY).eval()
    with pytest.raises(ValueError, match=r"30x32 but this ViT works at 32x32.*images_to_batch.*set_image_size"):
        vit(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"48x48 .*images_to_batch\(images, 32\).*set_image_size"):
        vit(torch.zeros(1, 3, 48, 48))  # divisible by the patch size, but not the model's size
    with pytest.raises(ValueError, match="channels-first"):
        vit(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="batch"):
        vit(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match=r"float in \[-1, 1\].*images_to_batch"):
        vit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="tensor"):
        vit([[0.0]])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(image_size=30), "not divisible by patch_size 8"),
        (dict(heads=5), "divisible by heads"),
        (dict(pool="cls"), "pool"),
        (dict(posemb="rope"), "posemb"),
        (dict(posemb_resize="nearest"), "posemb_resize"),
    ],
)
def test_bad_vit_configs_fail_at_construction(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **overrides)
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**dataclasses.asdict(TINY), **overrides})


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_set_image_size_resizes_the_grid_with_the_config_method(method):
    torch.manual_seed(0)
    vit = ViT(dataclasses.replace(TINY, posemb_resize=method)).eval()
    old = vit.posemb.detach().clone()
    vit.set_image_size(64)
    assert vit.cfg.image_size == 64 and vit.cfg.posemb_resize == method
    assert vit.posemb.shape == (1, 64, 32) and vit.posemb.requires_grad
    torch.testing.assert_close(vit.posemb.detach(), resize_posemb(old, 8, method))
    out = vit(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out.tokens.shape == (2, 64, 32) and out.pooled.shape == (2, 32)
    with pytest.raises(ValueError, match="works at 64x64"):
        vit(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        vit.set_image_size(60)
    assert vit.cfg.image_size == 64  # a failed call changes nothing


def test_set_image_size_recomputes_sincos():
    vit = ViT(dataclasses.replace(TINY, posemb="sincos2d"))
    assert vit.posemb is None and not any("posemb" in n for n, _ in vit.named_parameters())
    vit.set_image_size(48)
    torch.testing.assert_close(vit.position_embedding(), sincos_2d_posemb(6, 6, 32))
    assert vit(torch.rand(1, 3, 48, 48)).tokens.shape == (1, 36, 32)


def test_paper_facts():
    vit = ViT(get_config("vit", "tiny-cpu"))
    lns = [m for m in vit.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert lns and all(m.eps == 1e-6 for m in lns)
    w = vit.cfg.width
    assert abs(vit.posemb.std().item() - w**-0.5) < 0.1 * w**-0.5
    assert vit.patch_embed.kernel_size == vit.patch_embed.stride == (8, 8)
    assert vit.patch_embed.padding == (0, 0)
    attn = vit.encoder.blocks[0].attn
    assert all(lin.bias is not None for lin in (attn.q, attn.k, attn.v, attn.out))
    assert not any("cls" in n for n, _ in vit.named_parameters())
    assert isinstance(vit.head, MAPHead)


def test_reset_parameters_is_the_one_init():
    torch.manual_seed(0)
    vit = ViT(get_config("vit", "tiny-cpu"))
    with torch.no_grad():
        for p in vit.parameters():
            p.fill_(0.123)
    vit.reset_parameters()
    w = vit.cfg.width
    fan_in = 3 * 8 * 8
    assert abs(vit.patch_embed.weight.std().item() * fan_in**0.5 - 1) < 0.1  # LeCun normal
    assert vit.patch_embed.bias.abs().max() == 0
    assert abs(vit.posemb.std().item() * w**0.5 - 1) < 0.1
    q = vit.encoder.blocks[0].attn.q
    bound = (6 / (2 * w)) ** 0.5  # Xavier-uniform
    assert q.weight.abs().max() <= bound and q.weight.abs().max() > 0.9 * bound
    assert q.bias.abs().max() == 0
    fc1 = vit.encoder.blocks[0].mlp.fc1
    assert 0 < fc1.bias.abs().max() < 1e-5  # N(0, 1e-6)
    ln = vit.encoder.norm
    assert torch.equal(ln.weight, torch.ones(w)) and torch.equal(ln.bias, torch.zeros(w))
    assert vit.head.probe.abs().max() > 0 and (vit.head.probe != 0.123).all()


def test_block_is_pre_ln_with_tanh_gelu():
    torch.manual_seed(0)
    block = ViTBlock(16, 32, 4).eval()
    x = torch.randn(2, 5, 16)
    h = x + block.attn(F.layer_norm(x, (16,), block.ln1.weight, block.ln1.bias, 1e-6))
    z = F.layer_norm(h, (16,), block.ln2.weight, block.ln2.bias, 1e-6)
    mlp = block.mlp.fc2(0.5 * block.mlp.fc1(z) * (1 + torch.tanh(
        math.sqrt(2 / math.pi) * (block.mlp.fc1(z) + 0.044715 * block.mlp.fc1(z) ** 3))))
    torch.testing.assert_close(block(x), h + mlp, atol=1e-5, rtol=1e-5)


def test_attention_matches_torch_mha():
    torch.manual_seed(0)
    ours = ViTAttention(16, 4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(ours(q, kv), ref(q, kv, kv)[0], atol=1e-5, rtol=1e-5)


def test_map_head_is_permutation_invariant():
    torch.manual_seed(0)
    head = MAPHead(16, 32, 4).eval()
    tokens = torch.randn(3, 9, 16)
    out = head(tokens)
    assert out.shape == (3, 16)
    torch.testing.assert_close(head(tokens[:, torch.randperm(9)]), out, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter():
    vit = ViT(TINY)
    out = vit(torch.rand(2, 3, 32, 32) * 2 - 1)
    (out.tokens.sum() + out.pooled.sum()).backward()
    missing = [n for n, p in vit.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_lesson02_checks_accept_the_reference_and_explain_mistakes():
    from pali3_edu.exercises.lesson02 import check_map_head, check_patchify

    check_patchify(patchify)
    with pytest.raises(AssertionError, match="channels-first"):
        check_patchify(lambda im, p: rearrange(im, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=p, p2=p))

    def map_pool(tokens, head):
        x = head.attn(head.probe.expand(tokens.shape[0], -1, -1), context=tokens)
        return (x + head.mlp(head.norm(x)))[:, 0]

    check_map_head(map_pool)
    with pytest.raises(AssertionError, match="mean pooling"):
        check_map_head(lambda tokens, head: tokens.mean(1))


def test_vision_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pali3_edu.viz.vision import plot_posemb_similarity, show_patches

    fig = show_patches(torch.rand(3, 32, 32) * 2 - 1, patch=8)
    assert len(fig.axes) == 1 + 16
    fig2 = plot_posemb_similarity(ViT(TINY))
    assert len(fig2.axes) == 16 + 1  # one tile per position + the colour bar
    fig3 = plot_posemb_similarity(ViT(dataclasses.replace(TINY, posemb="sincos2d")))
    assert len(fig3.axes) == 16 + 1
    with pytest.raises(ValueError, match="square"):
        plot_posemb_similarity(torch.zeros(1, 6, 4))
    plt.close("all")
