"""Vision transformer: patches, position embeddings, blocks, heads, input checks."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from pali3_edu.config import ViTConfig, get_config
from pali3_edu.vit import (
    MAPHead, Attention, Block, ViT, patchify, resize_posemb, sincos_2d_posemb,
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
    tokens, pooled = vit(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert tokens.shape == (2, 16, 32)
    if pool == "none":
        assert pooled is None
    else:
        assert pooled.shape == (2, 32)
    if pool == "gap":
        torch.testing.assert_close(pooled, tokens.mean(1))


def test_vit_other_sizes_and_errors():
    torch.manual_seed(0)
    vit = ViT(TINY).eval()
    x = torch.rand(1, 3, 48, 40) * 2 - 1
    tokens, _ = vit(x)
    assert tokens.shape == (1, 6 * 5, 32)
    with pytest.raises(ValueError, match="divisible by the patch size 8"):
        vit(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        vit(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="batch"):
        vit(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        vit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    # on-the-fly resizing equals resizing the parameter once
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    on_the_fly = vit(x)
    vit.set_image_size(64)
    assert vit.cfg.image_size == 64 and vit.posemb.shape == (1, 64, 32)
    for a, b in zip(on_the_fly, vit(x)):
        torch.testing.assert_close(a, b)


def test_reference_facts():
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


def test_block_is_pre_ln_with_tanh_gelu():
    torch.manual_seed(0)
    block = Block(16, 32, 4).eval()
    x = torch.randn(2, 5, 16)
    h = x + block.attn(F.layer_norm(x, (16,), block.ln1.weight, block.ln1.bias, 1e-6))
    z = F.layer_norm(h, (16,), block.ln2.weight, block.ln2.bias, 1e-6)
    mlp = block.mlp.fc2(0.5 * block.mlp.fc1(z) * (1 + torch.tanh(
        math.sqrt(2 / math.pi) * (block.mlp.fc1(z) + 0.044715 * block.mlp.fc1(z) ** 3))))
    torch.testing.assert_close(block(x), h + mlp, atol=1e-5, rtol=1e-5)


def test_attention_matches_torch_mha():
    torch.manual_seed(0)
    ours = Attention(16, 4).eval()
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
    tokens, pooled = vit(torch.rand(2, 3, 32, 32) * 2 - 1)
    (tokens.sum() + pooled.sum()).backward()
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
    with pytest.raises(ValueError, match="square"):
        plot_posemb_similarity(torch.zeros(1, 6, 4))
    plt.close("all")
