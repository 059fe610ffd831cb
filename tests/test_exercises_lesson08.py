"""Lesson 08's exercise checks: the correct solutions pass, and each usual mistake gets the
hint that names its real cause (not just "wrong")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pali3_edu.exercises.lesson08 import check_answer_loss, check_join

# --------------------------------------------------------------------------------------------
# Exercise 1: join
# --------------------------------------------------------------------------------------------


def join_correct(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=1), torch.cat([ones, mask], dim=1)


def join_bool_mask(visual, text, mask):  # a bool keep-mask is fine too
    ones = torch.ones(visual.shape[:2], dtype=torch.bool)
    return torch.cat([visual, text], dim=1), torch.cat([ones, mask.bool()], dim=1)


def join_text_first(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([text, visual], dim=1), torch.cat([mask, ones], dim=1)


def join_ones_mask(visual, text, mask):
    embeds = torch.cat([visual, text], dim=1)
    return embeds, torch.ones(embeds.shape[:2], dtype=mask.dtype)


def join_image_masked(visual, text, mask):
    zeros = torch.zeros(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=1), torch.cat([zeros, mask], dim=1)


def join_mask_flipped(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=1), torch.cat([mask, ones], dim=1)


def join_batch_dim(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=0), torch.cat([ones, mask], dim=1)


def join_feature_dim(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=-1), torch.cat([ones, mask], dim=1)


def join_mask_batch_dim(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=1), torch.cat([ones, mask], dim=0)


def join_returns_none(visual, text, mask):
    torch.cat([visual, text], dim=1)


def join_returns_embeds_only(visual, text, mask):
    return torch.cat([visual, text], dim=1)


def join_raises(visual, text, mask):
    raise RuntimeError("not written yet")


def join_mask_with_embeds(visual, text, mask):  # joins the mask with the embeddings
    return torch.cat([visual, text], dim=1), torch.cat([visual, mask], dim=1)


def join_detached(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual.detach(), text], dim=1), torch.cat([ones, mask], dim=1)


def join_in_place(visual, text, mask):
    mask[mask == 0] = 1  # "fixes" the padding in the caller's tensor
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text], dim=1), torch.cat([ones, mask], dim=1)


def join_scaled(visual, text, mask):
    ones = torch.ones(visual.shape[:2], dtype=mask.dtype)
    return torch.cat([visual, text * 2], dim=1), torch.cat([ones, mask], dim=1)


@pytest.mark.parametrize("fn", [join_correct, join_bool_mask])
def test_check_join_accepts_the_solution(fn, capsys):
    check_join(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (join_text_first, "PREPENDS the visual tokens"),
        (join_ones_mask, "padding is not masked"),
        (join_image_masked, "image tokens are never padding"),
        (join_mask_flipped, "must follow the order of embeds"),
        (join_batch_dim, r"dim=0 \(the batch\)"),
        (join_feature_dim, r"dim=2 \(the features\)"),
        (join_mask_batch_dim, r"(?s)mask has shape .* dim=0 \(the batch\)"),
        (join_returns_none, "returned None"),
        (join_returns_embeds_only, "returned one tensor"),
        (join_raises, "raised RuntimeError: not written yet"),
        (join_mask_with_embeds, "join embeddings with embeddings and masks with masks"),
        (join_detached, "cut off from the autograd graph"),
        (join_in_place, "changed its input prompt_mask in place"),
        (join_scaled, "prompt positions after them are not"),
    ],
)
def test_check_join_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        check_join(fn)


def test_check_join_reports_a_crash_with_its_cause():
    with pytest.raises(AssertionError) as info:
        check_join(join_raises)
    assert isinstance(info.value.__cause__, RuntimeError)  # the learner's traceback is kept
    assert "Hint:" in str(info.value)


def test_wrong_dim_on_unequal_lengths_explains_torch_cat():
    """When P != S a join along dim 0 cannot even run; the exception gets the torch.cat hint."""
    from pali3_edu.exercises import lesson08

    def cat_dim0(visual, text, mask):
        return torch.cat([visual, text], dim=0), mask

    visual, text, mask = lesson08._join_inputs(2, 6, 3, 4, seed=0)
    with pytest.raises(AssertionError, match="concatenate along the sequence, dim=1"):
        lesson08._call(cat_dim0, "cat_dim0(...)", (visual, text, mask), lesson08._join_exception_hint)


# --------------------------------------------------------------------------------------------
# Exercise 2: the answer loss
# --------------------------------------------------------------------------------------------


def loss_correct(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def loss_manual(logits, labels):
    real = labels != -100
    logp = logits.log_softmax(-1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return -(picked * real).sum() / real.sum()


def loss_all_positions(logits, labels):
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    return losses.mean()


def loss_scores_padding(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten())


def loss_per_example(logits, labels):
    per = [F.cross_entropy(logits[b], labels[b], ignore_index=-100) for b in range(len(labels))]
    return torch.stack(per).mean()


def loss_shifted_like_gpt(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def loss_decoder_input_as_target(logits, labels):
    target = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)


def loss_sum(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")


def loss_returns_none(logits, labels):
    F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def loss_item(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()


def loss_not_flattened(logits, labels):
    return F.cross_entropy(logits, labels, ignore_index=-100)


def loss_gather_minus_100(logits, labels):
    return -logits.log_softmax(-1).gather(-1, labels[..., None]).mean()


def loss_per_example_vector(logits, labels):
    losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return losses.sum(1) / (labels != -100).sum(1)


def loss_negated(logits, labels):
    return -loss_correct(logits, labels)


def loss_in_place(logits, labels):
    labels[labels == -100] = 0
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def loss_detached(logits, labels):
    return loss_correct(logits.detach(), labels)


def loss_probabilities(logits, labels):
    real = labels != -100
    p = logits.softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return -p[real].mean()


def loss_raises(logits, labels):
    raise ValueError("todo")


def loss_fixed_vocab(logits, labels):  # right on the small example only
    if logits.shape[-1] != 11:
        return loss_correct(logits, labels) * 1.1
    return loss_correct(logits, labels)


@pytest.mark.parametrize("fn", [loss_correct, loss_manual])
def test_check_answer_loss_accepts_the_solution(fn, capsys):
    check_answer_loss(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (loss_all_positions, "mean over ALL positions, the ignored ones"),
        (loss_scores_padding, "scores the padding positions"),
        (loss_per_example, "mean of per-example means"),
        (loss_shifted_like_gpt, "do not shift again"),
        (loss_decoder_input_as_target, "decoder's input .* used as the target"),
        (loss_sum, "SUM of the token losses"),
        (loss_returns_none, "returned None"),
        (loss_item, "returned a float, not a tensor"),
        (loss_not_flattened, "wants the classes in dim 1"),
        (loss_gather_minus_100, "-100 is not a token id"),
        (loss_per_example_vector, "one loss per example"),
        (loss_negated, "negative of the loss"),
        (loss_in_place, "changed labels in place"),
        (loss_detached, "cut off from the autograd graph"),
        (loss_probabilities, "negative probability"),
        (loss_raises, "raised ValueError: todo"),
        (loss_fixed_vocab, "the model's own loss"),
    ],
)
def test_check_answer_loss_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        check_answer_loss(fn)


def test_the_small_example_separates_the_mistakes():
    """The mistakes the check recognises give different values on its example, and none of
    them equals the right loss (else a hint could name the wrong cause)."""
    from pali3_edu.exercises import lesson08

    logits, labels = lesson08._loss_inputs()
    want = loss_correct(logits, labels)
    values = [v for v, _, _ in lesson08._wrong_losses(logits, labels)]
    for i, v in enumerate(values):
        assert not torch.allclose(v, want, rtol=1e-3), lesson08._wrong_losses(logits, labels)[i][1]
        for j in range(i):
            same_hint = lesson08._wrong_losses(logits, labels)[i][2] == lesson08._wrong_losses(logits, labels)[j][2]
            assert same_hint or not torch.allclose(v, values[j], rtol=1e-3), (i, j)


def test_check_answer_loss_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_answer_loss(loss_correct)
    assert torch.equal(torch.rand(3), expected)
