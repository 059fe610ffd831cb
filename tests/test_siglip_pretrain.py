"""SigLIP pretraining on ShapesWorld (``pali3_edu.recipes.siglip``): batches, a short training
run, retrieval. The cache itself is tested for every stage in ``test_recipes.py``."""

import pytest
import torch

from pali3_edu.data.collate import images_to_batch
from pali3_edu.data.shapesworld import COLORS, SHAPES, load_shapesworld
from pali3_edu.recipes.siglip import (
    CaptionPairs,
    EvalSet,
    class_prompts,
    contrastive_loss_fn,
    get_recipe,
    images_to_uint8,
    micro_siglip_config,
    retrieval_metrics,
    summarize_sweep,
    train_siglip,
    uint8_to_pixels,
)
from pali3_edu.siglip import SigLIP
from pali3_edu.tokenizer import course_tokenizer

NUM_SCENES = 48


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer()


@pytest.fixture(scope="module")
def cfg():
    return micro_siglip_config(image_size=32)


@pytest.fixture(scope="module")
def scenes():
    return load_shapesworld("train", NUM_SCENES, image_size=32)


@pytest.fixture()
def pairs(scenes, tok, cfg):
    images = images_to_uint8(scenes["image"], cfg.vision.image_size)
    return CaptionPairs(images, scenes["captions"], tok, cfg.text.max_len, batch_size=8, seed=3)


def test_uint8_storage_is_lossless(scenes):
    images = list(scenes["image"][:5])
    torch.testing.assert_close(uint8_to_pixels(images_to_uint8(images, 32)), images_to_batch(images, 32))


def test_batches_are_deterministic_in_step(pairs, tok, cfg):
    a, b = pairs.get_batch(7), pairs.get_batch(7)
    assert a["pixel_values"].shape == (8, 3, 32, 32) and a["input_ids"].shape == (8, cfg.text.max_len)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    # a second object built the same way (e.g. after a restart) gives the same batch
    again = CaptionPairs(pairs.images, pairs.captions, tok, cfg.text.max_len, batch_size=8, seed=3)
    assert torch.equal(again.get_batch(7)["input_ids"], a["input_ids"])
    # other steps (and other seeds) give other batches
    assert not torch.equal(pairs.get_batch(8)["input_ids"], a["input_ids"])
    other = CaptionPairs(pairs.images, pairs.captions, tok, cfg.text.max_len, batch_size=8, seed=4)
    assert not torch.equal(other.get_batch(7)["pixel_values"], a["pixel_values"])


def test_batch_pairs_each_image_with_one_of_its_captions(pairs, tok):
    for step in range(20):
        scenes, rows = pairs.sample(step)
        assert len(set(scenes.tolist())) == len(scenes)  # no scene twice in a batch
        texts = pairs.texts(step)
        batch = pairs.get_batch(step)
        for i, (s, text) in enumerate(zip(scenes.tolist(), texts)):
            assert text in pairs.captions[s]
            assert torch.equal(batch["pixel_values"][i], uint8_to_pixels(pairs.images[s]))
            ids = batch["input_ids"][i]
            assert ids[-1] == tok.eos_id  # sticky EOS: the pooled position is EOS
            assert tok.decode(ids, skip_special_tokens=True).strip() == text
    # over many steps every phrasing index gets used (a random phrasing per step)
    used = {int(r) for step in range(200) for r in pairs.sample(step)[1]}
    assert len(used) > 0.8 * pairs.caption_ids.shape[0]


def test_a_few_steps_lower_the_loss(pairs, cfg):
    recipe = get_recipe("micro", **{"data.batch_size": 8, "steps": 40, "lr": 3e-3, "warmup_steps": 4})
    fixed = pairs.get_batch(10_000)  # a batch the run never trains on as such

    def loss_of(model):
        with torch.no_grad():
            return float(contrastive_loss_fn("sigmoid")(model, fixed)["loss"])

    torch.manual_seed(recipe.train.seed)
    before = loss_of(SigLIP(cfg).eval())
    model, history = train_siglip(recipe, pairs)
    after = loss_of(model.eval())
    assert after < 0.8 * before, (before, after)
    assert history.losses[-1] < history.losses[0]
    assert {"t", "b"} <= set(history.rows[0])  # temperature and bias are logged


def test_softmax_loss_trains_too(pairs, cfg):
    recipe = get_recipe("micro", **{"data.batch_size": 8, "steps": 25, "lr": 3e-3, "warmup_steps": 3,
                                    "data.loss": "softmax"})
    _, history = train_siglip(recipe, pairs)
    assert history.losses[-1] < history.losses[0] < 2.5  # ln 8 ≈ 2.08 at start


def test_sweep_summary_gives_mean_and_spread_over_seeds():
    rows = [dict(loss="sigmoid", batch_size=8, seed=s, **{"i2t_r@1": v}) for s, v in enumerate((0.1, 0.2, 0.3))]
    rows.append(dict(loss="softmax", batch_size=8, seed=0, **{"i2t_r@1": 0.5}))
    summary = summarize_sweep(rows)
    assert summary["sigmoid", 8] == pytest.approx((0.2, 0.1))
    assert summary["softmax", 8] == (0.5, 0.0)


def test_prompts_match_the_caption_style(scenes):
    shape_prompts, color_prompts = class_prompts("shape"), class_prompts("color")
    assert list(shape_prompts) == list(SHAPES) and list(color_prompts) == list(COLORS)
    assert all(len(p) == 12 for p in shape_prompts.values())
    # the canonical caption of a single-object scene is one of its class's prompts, for both tasks
    single = [(objs[0], cap) for objs, cap in zip(scenes["objects"], scenes["caption"]) if len(objs) == 1]
    assert single
    for obj, caption in single:
        caption = caption.split(" and the word")[0]
        assert caption in shape_prompts[obj["shape"]] and caption in color_prompts[obj["color"]]
    assert class_prompts("color", "short")["red"] == ["a red shape"]
    with pytest.raises(ValueError, match="attribute"):
        class_prompts("size")


def test_retrieval_counts_identical_captions_as_correct(cfg):
    class Oracle(torch.nn.Module):
        """Embeds image i and caption i to the same one-hot vector of its caption's identity."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode_image(self, x):
            return None, torch.nn.functional.one_hot(x[:, 0, 0, 0].long() + 1, 4).float()

        def encode_text(self, ids):
            return torch.nn.functional.one_hot(ids[:, 0], 4).float()

    # scenes 0 and 1 have the same caption; their images are told apart only by pixel values
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    images[0, 0, 0, 0], images[1, 0, 0, 0], images[2, 0, 0, 0] = 127, 127, 255  # -> classes 1, 1, 2
    data = EvalSet(images=images, captions=["a red circle", "a red circle", "a blue star"],
                   input_ids=torch.tensor([[1], [1], [2]]), objects=[[], [], []])
    assert data.same_caption.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    metrics = retrieval_metrics(Oracle(), data, ks=(1,))
    assert metrics == {"i2t_r@1": 1.0, "t2i_r@1": 1.0}
