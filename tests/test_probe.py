"""Linear probes on frozen patch tokens (pali3_edu.probe)."""

import pytest
import torch

from pali3_edu.config import ViTConfig
from pali3_edu.data.shapesworld import COLORS, SHAPES
from pali3_edu.probe import CLASS_NAMES, linear_probe, patch_features, patch_labels, probe_vit
from pali3_edu.vit import ViT


def obj(box, shape="circle", color="red"):
    return {"box": box, "shape": shape, "color": color}


def test_patch_labels_follow_the_patch_centres():
    scenes = [[obj([0.0, 0.5, 0.5, 1.0], "star", "blue")], []]
    assert patch_labels(scenes, 2, "object").tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert patch_labels(scenes, 2, "shape").tolist()[0] == [0, 1 + SHAPES.index("star"), 0, 0]
    assert patch_labels(scenes, 2, "color").tolist()[0] == [0, 1 + COLORS.index("blue"), 0, 0]
    # a 4x4 grid: the box [0, 0.5, 0.5, 1] holds the centres of the top-right 2x2 patches
    grid = patch_labels(scenes, 4, "object")[0].view(4, 4)
    assert grid.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_patch_labels_first_object_wins_and_bad_arguments():
    scenes = [[obj([0, 0, 1, 1], "square"), obj([0, 0, 1, 1], "cross")]]
    assert set(patch_labels(scenes, 3, "shape").flatten().tolist()) == {1 + SHAPES.index("square")}
    with pytest.raises(ValueError, match="Unknown probe target"):
        patch_labels(scenes, 2, "size")
    with pytest.raises(ValueError, match="grid must be a positive int"):
        patch_labels(scenes, 0, "object")


def _synthetic(n, patches, width, informative, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n, patches), generator=g)
    feats = torch.randn(n, patches, width, generator=g)
    if informative:
        feats[..., :3] += 4 * torch.nn.functional.one_hot(labels, 3)
    return feats, labels


def test_probe_reads_linear_information_and_not_noise():
    # "color" has 7 classes; the synthetic labels use 0..2 of them
    tr_f, tr_y = _synthetic(200, 4, 8, True, 0)
    te_f, te_y = _synthetic(100, 4, 8, True, 1)
    good = linear_probe(tr_f, tr_y, te_f, te_y, "color", steps=200)
    assert good.accuracy > 0.95 and good.object_accuracy > 0.95
    tr_f, tr_y = _synthetic(200, 4, 8, False, 0)
    te_f, te_y = _synthetic(100, 4, 8, False, 1)
    noise = linear_probe(tr_f, tr_y, te_f, te_y, "color", steps=200)
    assert noise.accuracy < 0.5  # chance is 1/3
    assert noise.predictions.shape == te_y.shape


def test_blind_baseline_is_the_most_common_label_per_position():
    tr_y = torch.tensor([[0, 2], [0, 2], [1, 2]])
    te_y = torch.tensor([[0, 2], [1, 1]])
    f_tr, f_te = torch.zeros(3, 2, 4), torch.zeros(2, 2, 4)
    r = linear_probe(f_tr, tr_y, f_te, te_y, "shape", steps=1)
    assert r.blind_accuracy == pytest.approx(2 / 4)  # blind guesses [0, 2]: right at (0,0) and (0,1)
    # on object patches only: position 0's most common object label is 1, position 1's is 2
    assert r.blind_object_accuracy == pytest.approx(2 / 3)


def test_probe_refuses_mismatched_inputs():
    f, y = torch.zeros(2, 4, 8), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="must be \\(N, patches, width\\)"):
        linear_probe(f, y[:, :3], f, y, "object")
    with pytest.raises(ValueError, match="must be in 0..1"):
        linear_probe(f, y + 5, f, y, "object")
    with pytest.raises(ValueError, match="differ in shape"):
        linear_probe(f, y, torch.zeros(2, 4, 6), y, "object")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        linear_probe(f, y, f, y, "object", steps=0)


def test_patch_features_and_probe_vit_on_a_micro_vit():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=16, patch_size=8, width=16, depth=1, mlp_dim=32, heads=2, pool="none")).train()
    pixels = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    feats = patch_features(vit, pixels, batch_size=4)
    assert feats.shape == (6, 4, 16) and vit.training  # mode restored
    objects = [[obj([0, 0, 0.5, 0.5])]] * 6
    res = probe_vit(vit, pixels[:4], objects[:4], pixels[4:], objects[4:], targets=("object",), steps=5)
    assert set(res) == {"object"} and res["object"].predictions.shape == (2, 4)
    assert CLASS_NAMES["object"] == ("background", "object")
    with pytest.raises(ValueError, match="one object list per image"):
        probe_vit(vit, pixels, objects[:2], pixels, objects)
