"""Config presets: every preset builds, variant strings follow big_vision, errors are helpful."""

import pytest

from pali3_edu.config import get_config, list_presets, vit_variant


def test_presets_listed_and_copies():
    assert "siglip:tiny-cpu" in list_presets() and "encdec:tiny-cpu" in list_presets()
    a = get_config("encdec", "tiny-cpu")
    a.d_model = 1
    assert get_config("encdec", "tiny-cpu").d_model != 1, "get_config must return a fresh copy"


@pytest.mark.parametrize(
    "variant, shape",
    [("B/16", (768, 12, 3072, 12)), ("So400m/14", (1152, 27, 4304, 16)), ("G/14", (1664, 48, 8192, 16))],
)
def test_vit_variants_match_paper_shapes(variant, shape):
    cfg = vit_variant(variant)
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.heads) == shape
    assert cfg.patch_size == int(variant.split("/")[1])


def test_visual_token_counts():
    # PaLI-3 (patch 14): 224 -> 256, 812 -> 3364, 1064 -> 5776 visual tokens
    for size, tokens in [(224, 256), (812, 3364), (1064, 5776)]:
        assert vit_variant("G/14", image_size=size).num_patches == tokens


def test_unknown_names_explain_choices():
    with pytest.raises(ValueError, match="Available"):
        get_config("siglip", "huge")
    with pytest.raises(ValueError, match="B/16"):
        vit_variant("Q/3")
