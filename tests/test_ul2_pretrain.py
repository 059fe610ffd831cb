"""Tests for UL2 pretraining (``pali3_edu.recipes.ul2``) on the ``micro`` recipe. The cache
itself is tested for every stage in ``test_recipes.py``."""

from __future__ import annotations

import math

import pytest
import torch

from pali3_edu.recipes.ul2 import (
    UL2Data,
    build_model,
    get_recipe,
    pack_chunks,
    pretrain_ul2,
    unigram_baseline,
    validation_breakdown,
    validation_losses,
)
from pali3_edu.train import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tok():
    from pali3_edu.tokenizer import course_tokenizer

    return course_tokenizer()


@pytest.fixture(scope="module")
def data(tok):
    return UL2Data.build(tok, get_recipe("micro"))


def test_chunks_are_packed_text(data, tok):
    assert data.train_chunks.shape[1] == data.cfg.chunk_len
    assert len(data.train_chunks) > 50 and len(data.val_chunks) > 3
    text = tok.decode(data.train_chunks[0].tolist())
    assert any(w in text for w in ("circle", "square", "triangle", "shape"))
    # no special tokens inside raw text
    assert not any(tok.is_special(i) for i in data.train_chunks.flatten().tolist())
    with pytest.raises(ValueError, match="chunk"):
        pack_chunks(torch.arange(5), 8)


def test_batches_are_deterministic_in_step(data):
    a, b, c = data.get_batch(7), data.get_batch(7), data.get_batch(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].shape[0] == data.cfg.batch_size
    assert a["input_ids"].shape[1] <= data.cfg.max_input_len
    assert a["labels"].shape[1] <= data.cfg.max_target_len


def test_val_batches_cover_each_denoiser(data, tok):
    batches = data.val_batches()
    assert len(batches) == len(data.mixture.denoisers)
    for d, batch in zip(data.mixture.denoisers, batches):
        assert (batch["input_ids"][:, 0] == tok.mode_id(d.mode_token)).all()
    again = data.val_batches()
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(batches, again))


def test_resume_equals_uninterrupted(tok, data, tmp_path):
    recipe = get_recipe("micro", steps=6, warmup_steps=2)
    full = build_model(recipe, tok)
    h_full = pretrain_ul2(full, data, recipe, checkpoint=tmp_path / "full", progress=False, device="cpu")
    part = build_model(recipe, tok)
    pretrain_ul2(part, data, recipe, checkpoint=tmp_path / "part", stop_after=3, progress=False,
                 device="cpu")
    assert load_checkpoint(tmp_path / "part")["step"] == 3
    resumed = build_model(recipe, tok)  # a "new process"
    h_res = pretrain_ul2(resumed, data, recipe, checkpoint=tmp_path / "part", progress=False,
                         device="cpu")
    assert h_res.resumed_from == 3
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert h_res.losses == pytest.approx(h_full.losses)


def test_quick_loss_decrease(tok, data):
    recipe = get_recipe("micro")  # 60 steps
    model = build_model(recipe, tok)
    before = validation_losses(model, data, max_chunks=16)
    history = pretrain_ul2(model, data, recipe, progress=False, device="cpu")
    after = validation_losses(model, data, max_chunks=16)
    assert set(after) == set(before) and len(after) == 7
    assert all(math.isfinite(v) for v in after.values())
    # from the T5 init (≈ 40 nats) to well below a uniform guess (log 1792 ≈ 7.5)
    assert history.losses[-1] < 0.25 * history.losses[0]
    assert sum(after.values()) / 7 < 0.5 * sum(before.values()) / 7
    assert sum(after.values()) / 7 < math.log(tok.padded_vocab_size)
    # and below the unigram baseline (predicting token frequencies, ignoring the input)
    assert sum(after.values()) / 7 < sum(unigram_baseline(data, 5, 16).values()) / 7 - 0.5
    assert {"loss_R", "loss_X", "loss_S"} & set(history.rows[-1])
    parts = validation_breakdown(model, data, max_chunks=16)
    assert set(parts) == set(after)
    for r in parts.values():
        assert 0 <= r["first_acc"] <= 1 and 0 <= r["other_acc"] <= 1
        assert math.isfinite(r["first_loss"]) and math.isfinite(r["other_loss"])


def test_unigram_baseline_is_sensible(data, tok):
    base = unigram_baseline(data, batches=5, max_chunks=16)
    assert len(base) == 7
    assert all(1.0 < v < math.log(tok.padded_vocab_size) for v in base.values())
