"""Metrics on small cases computed by hand."""

import pytest
import torch
import torch.nn.functional as F

from pali3_edu.metrics import iou, recall_at_k, zero_shot_accuracy, zero_shot_predict


# ------------------------------------------------------------------ recall@k
SIM = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.0],  # query 0: ranking 0, 2, 1, 3
        [0.8, 0.3, 0.7, 0.6],  # query 1: ranking 0, 2, 3, 1
        [0.1, 0.2, 0.3, 0.4],  # query 2: ranking 3, 2, 1, 0
    ]
)


@pytest.mark.parametrize(
    "targets, k, expected",
    [
        ([0, 1, 3], 1, 2 / 3),  # hits: q0 yes, q1 no (rank 4), q2 yes
        ([0, 1, 3], 2, 2 / 3),
        ([0, 1, 3], 3, 2 / 3),
        ([0, 1, 3], 4, 1.0),
        ([2, 2, 0], 1, 0.0),
        ([2, 2, 0], 2, 2 / 3),  # 2 is second for q0 and q1; 0 is last for q2
        ([2, 2, 0], 10, 1.0),  # k larger than the number of items = everything retrieved
    ],
)
def test_recall_at_k_hand_computed(targets, k, expected):
    assert recall_at_k(SIM, targets, k) == pytest.approx(expected)


def test_recall_with_several_correct_items():
    # image 0 has captions 0 and 1, image 1 has captions 2 and 3 (like an image with phrasings)
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.9, 0.1, 0.2, 0.3]])
    relevant = torch.tensor([[True, True, False, False], [False, False, True, True]])
    assert recall_at_k(sim, relevant, 1) == pytest.approx(0.5)  # image 1 ranks caption 0 first
    assert recall_at_k(sim, relevant, 2) == pytest.approx(1.0)  # caption 3 is its second


def test_recall_text_to_image_is_the_transpose():
    sim = torch.tensor([[0.9, 0.8], [0.1, 0.2]])  # rows: images, columns: captions
    assert recall_at_k(sim, [0, 1], 1) == pytest.approx(1.0)  # each image ranks its caption first
    assert recall_at_k(sim.T, [0, 1], 1) == pytest.approx(0.5)  # text→image: text 1 picks image 0
    assert recall_at_k(sim.T, [0, 0], 1) == pytest.approx(1.0)


def test_recall_errors_explain():
    with pytest.raises(ValueError, match="one item index per query"):
        recall_at_k(SIM, [0, 1], 1)
    with pytest.raises(ValueError, match="must lie in"):
        recall_at_k(SIM, [0, 1, 4], 1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(SIM, [0, 1, 2], 0)


# ------------------------------------------------------------------ zero-shot
def test_zero_shot_accuracy():
    classes = torch.eye(3)  # class c points along axis c
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.7, 0.0], [0.0, 0.0, -1.0]])
    assert zero_shot_predict(images, classes).tolist() == [0, 2, 1, 0]
    # labels [0, 2, 0, 2]: correct, correct, wrong, wrong
    assert zero_shot_accuracy(images, classes, [0, 2, 0, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one label per image"):
        zero_shot_accuracy(images, classes, [0, 1])


# ------------------------------------------------------------------ IoU
@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),  # overlap 1, union 4 + 4 - 1
        ((0, 0, 2, 2), (2, 2, 4, 4), 0.0),  # touching corners
        ((0, 0, 4, 2), (0, 0, 2, 4), 4 / 12),  # (y0, x0, y1, x1): tall vs wide box
        ((0, 0, 1, 1), (0, 0, 2, 2), 0.25),  # nested
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes
    ],
)
def test_iou_hand_computed(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_iou_order_is_y_then_x():
    # a box 2 tall and 1 wide overlaps a box 1 tall and 2 wide only in the unit square
    assert iou((0, 0, 2, 1), (0, 0, 1, 2)) == pytest.approx(1 / 3)
    assert iou((0, 0, 2, 1), (0, 0, 2, 1)) == pytest.approx(1.0)


def test_iou_batched_tensors():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([0.0, 0, 2, 2])
    out = iou(a, b)
    assert isinstance(out, torch.Tensor) and out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.25]))
    with pytest.raises(ValueError, match="4 coordinates"):
        iou([0, 0, 1], [0, 0, 1, 1])


# ------------------------------------------------------------------ lesson 04 exercise checks
def test_lesson04_checks_accept_the_reference_and_explain_mistakes():
    import torch.nn.functional as F

    from pali3_edu.exercises.lesson04 import check_recall_at_k, check_zero_shot_classifier

    check_recall_at_k(recall_at_k)
    with pytest.raises(AssertionError, match="fraction"):
        check_recall_at_k(lambda s, t, k: float((s.topk(k, dim=1).indices == t[:, None]).any(1).sum()))
    check_zero_shot_classifier(lambda i, p: (i @ F.normalize(p.mean(1), dim=-1).T).argmax(-1))
    with pytest.raises(AssertionError, match="re-normalise"):
        check_zero_shot_classifier(lambda i, p: (i @ p.mean(1).T).argmax(-1))


def test_zero_shot_max_vs_mean_aggregation():
    # class 0's prompts point two opposite ways (e.g. "red circle", "blue circle"): their mean
    # nearly cancels, so mean-ensembling loses an image that matches one of them exactly
    e = torch.eye(3)
    prompts = torch.stack([
        torch.stack([e[0], -e[0] - 0.2 * e[1]]),  # class 0
        torch.stack([e[1], e[1]]),                 # class 1
    ])
    prompts = F.normalize(prompts, dim=-1)
    image = F.normalize(e[0] + 0.3 * e[1], dim=-1)[None]
    assert zero_shot_predict(image, prompts, aggregate="max").tolist() == [0]
    assert zero_shot_predict(image, prompts, aggregate="mean").tolist() == [1]
    with pytest.raises(ValueError, match="aggregate"):
        zero_shot_predict(image, prompts, aggregate="median")
