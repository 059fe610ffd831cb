"""Metrics on small cases computed by hand, and CIDEr-D against pycocoevalcap."""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import pali3_edu.metrics
from pali3_edu.metrics import (
    anls,
    box_iou,
    cider_d,
    cider_d_scores,
    coco_tokenize,
    detection_precision_recall,
    exact_match,
    iou,
    levenshtein,
    match_detections,
    normalize_vqa_answer,
    recall_at_k,
    refer_accuracy,
    refer_mean_iou,
    vqa_accuracy,
    zero_shot_accuracy,
    zero_shot_predict,
)


def test_docstring_examples():
    result = doctest.testmod(pali3_edu.metrics)
    assert result.attempted >= 4 and result.failed == 0


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


# ------------------------------------------------------------------ CIDEr-D
def test_coco_tokenize():
    assert coco_tokenize("A man's black-and-white dog, isn't it?") == "a man 's black-and-white dog is n't it"
    assert coco_tokenize('Two "big" (red) circles... on 3.5 m & more!') == "two big red circles on 3.5 m & more"
    assert coco_tokenize("  -- ; ") == ""
    text = "A dog's toy -- can't (won't) be found."
    assert coco_tokenize(coco_tokenize(text)) == coco_tokenize(text)


def test_cider_hand_computed():
    # two images with unique words: idf = log 2 for both. A one-word caption has only unigrams,
    # so the n = 2..4 terms are 0 and a perfect match scores 10 * (1 + 0 + 0 + 0) / 4
    assert cider_d_scores(["dog", "cat"], [["dog"], ["cat"]]) == pytest.approx([2.5, 2.5])
    # clipping: "dog dog" vs "dog" has unigram vectors h = 2w, r = w: min(2w, w)·w / (2w·w) = 1/2
    # (the plain cosine would be 1); lengths differ by one bigram: penalty exp(-1 / 72)
    expected = 10 * 0.5 * math.exp(-1 / 72) / 4
    assert cider_d_scores(["dog dog", "cat"], [["dog"], ["cat"]])[0] == pytest.approx(expected)
    # a word that every image's references contain has idf 0 and earns nothing
    assert cider_d(["the", "the"], [["the dog"], ["the cat"]]) == 0.0


CIDER_CASES = {
    "multiple references": (
        ["a red circle above a blue square", "two green triangles", "a dog on a skateboard"],
        [
            ["a red circle is above a blue square", "red circle over blue square", "a circle and a square"],
            ["two green triangles side by side", "green triangles"],
            ["a dog rides a skateboard", "a small dog on a skateboard in the street", "dog skateboarding"],
        ],
    ),
    "repeated words": (
        ["dog dog dog dog dog", "a a a a", "red red circle circle"],
        [["a dog runs", "the dog"], ["a cat sits on a mat"], ["a red circle", "red circle red circle"]],
    ),
    "empty-ish captions": (
        ["", "dog", "a", "circle"],
        [["a dog"], ["a dog barks", ""], ["a cat"], ["circle", "a red circle on the left"]],
    ),
    "punctuation before tokenising": (
        ["A dog's ball, red!", "Two cats -- sleeping.", "It isn't a (blue) square."],
        [["The dog's ball is red.", "A red ball."], ["Two cats sleeping", "cats asleep"], ["Not a blue square!"]],
    ),
}


@pytest.mark.parametrize("case", CIDER_CASES)
def test_cider_matches_pycocoevalcap(case):
    # a test dependency: this must fail, not skip, when pycocoevalcap is missing
    from pycocoevalcap.cider.cider import Cider

    predictions, references = CIDER_CASES[case]
    res = {i: [coco_tokenize(p)] for i, p in enumerate(predictions)}
    gts = {i: [coco_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    expected, expected_per_image = Cider().compute_score(gts, res)
    assert cider_d(predictions, references) == pytest.approx(expected, abs=1e-9)
    assert cider_d_scores(predictions, references) == pytest.approx(list(expected_per_image), abs=1e-9)
    pretokenised = cider_d([res[i][0] for i in res], [gts[i] for i in gts], tokenize=False)
    assert pretokenised == pytest.approx(expected, abs=1e-9)


def test_cider_errors_explain():
    with pytest.raises(TypeError, match="list of predictions"):
        cider_d("a dog", [["a dog"]])
    with pytest.raises(TypeError, match="list of reference"):
        cider_d(["a dog"], ["a dog"])
    with pytest.raises(ValueError, match="one prediction per image"):
        cider_d(["a dog", "a cat"], [["a dog"]])
    with pytest.raises(ValueError, match="at least one reference"):
        cider_d(["a dog"], [[]])


# ------------------------------------------------------------------ VQA accuracy
@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),
        ("none", "0"),
        ("The dog.", "dog"),
        ("an apple", "apple"),
        ("  Yes!\n", "yes"),
        ("3.5", "3.5"),
        ("3,000", "3000"),
        ("black-and-white", "black and white"),
        ("red, white", "red white"),
        ("dont know", "don't know"),
        ("u.s. army", "us army"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize("agree, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(agree, expected):
    # e.g. 3 of 10 agree: leaving out one of the 3 leaves 2 matches (2/3, three times), leaving out
    # one of the other 7 leaves 3 (1.0, seven times): (3 * 2/3 + 7 * 1) / 10 = 0.9
    answers = ["2"] * agree + ["3"] * (10 - agree)
    assert vqa_accuracy("two", answers) == pytest.approx(expected)


def test_vqa_accuracy_fewer_answers_and_normalisation():
    assert vqa_accuracy("A dog.", ["dog"]) == 1.0  # one answer: exact match after normalising
    assert vqa_accuracy("cat", ["dog"]) == 0.0
    assert vqa_accuracy("dog", ["dog", "cat"]) == pytest.approx(0.5)  # bar is min(3, 2) = 2
    assert vqa_accuracy("dog", ["dog", "Dog", "cat", "cat", "cat"]) == pytest.approx(2 / 3)
    assert vqa_accuracy("dog", ["the dog", "dog!", "DOG", "cat", "cat"]) == 1.0
    with pytest.raises(ValueError, match="list of strings"):
        vqa_accuracy("dog", "dog")
    with pytest.raises(ValueError, match="list of strings"):
        vqa_accuracy("dog", [])


# ------------------------------------------------------------------ ANLS, exact match
@pytest.mark.parametrize("a, b, d", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0), ("ab", "ba", 2)])
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d and levenshtein(b, a) == d


def test_anls():
    assert anls("London", [" london "]) == 1.0  # lower-cased and stripped
    assert anls("l0ndon", ["london"]) == pytest.approx(1 - 1 / 6)
    assert anls("lndn", ["london"]) == pytest.approx(1 - 2 / 6)
    assert anls("ab", ["cb"]) == 0.0  # NL = 0.5 is not below the threshold
    assert anls("ab", ["cb"], threshold=0.6) == pytest.approx(0.5)
    assert anls("paris", ["london"]) == 0.0
    assert anls("lndn", ["paris", "london", "londn"]) == pytest.approx(1 - 1 / 5)  # best ground truth
    assert anls("", [""]) == 1.0
    with pytest.raises(ValueError, match="list of strings"):
        anls("london", "london")


def test_exact_match():
    assert exact_match("  A  red\tcircle ", "a red circle") == 1.0
    assert exact_match("a red circle.", "a red circle") == 0.0


# ------------------------------------------------------------------ detection
def test_box_iou_is_iou():
    assert iou is box_iou


def test_detection_precision_recall_hand_computed():
    gt_boxes, gt_labels = [(0, 0, 10, 10), (0, 20, 10, 30)], ["cat", "dog"]
    pred_boxes = [(0, 0, 10, 10), (0, 0, 10, 10), (0, 21, 10, 30)]
    pred_labels = ["cat", "dog", "dog"]  # the second box is on the cat but says "dog"
    assert match_detections(pred_boxes, pred_labels, gt_boxes, gt_labels) == [(0, 0), (2, 1)]
    assert detection_precision_recall(pred_boxes, pred_labels, gt_boxes, gt_labels) == pytest.approx((2 / 3, 1.0))
    # the same object predicted twice: one true and one false positive
    p, r = detection_precision_recall([(0, 0, 10, 10)] * 2, ["cat", "cat"], gt_boxes, gt_labels)
    assert (p, r) == pytest.approx((0.5, 0.5))
    # IoU exactly at the threshold counts; tensors work too
    half = torch.tensor([[0.0, 0, 10, 5]])
    assert detection_precision_recall(half, ["cat"], torch.tensor([[0.0, 0, 10, 10]]), ["cat"]) == (1.0, 1.0)
    assert detection_precision_recall(half, ["cat"], [(0, 0, 10, 10)], ["cat"], iou_threshold=0.6) == (0.0, 0.0)


def test_detection_matching_goes_by_iou_not_prediction_order():
    # pred 0 overlaps gt 0 (IoU 0.54) and gt 1 (0.82); pred 1 is exactly gt 1 and misses gt 0 (0.43).
    # Taking predictions in order would give pred 0 gt 1 and leave pred 1 unmatched.
    gt = [(0, 0, 10, 10), (0, 4, 10, 14)]
    pred = [(0, 3, 10, 13), (0, 4, 10, 14)]
    assert sorted(match_detections(pred, ["a", "a"], gt, ["a", "a"])) == [(0, 0), (1, 1)]
    assert detection_precision_recall(pred, ["a", "a"], gt, ["a", "a"]) == (1.0, 1.0)


def test_detection_empty_cases_and_errors():
    gt = [(0, 0, 10, 10)]
    assert detection_precision_recall([], [], gt, ["cat"]) == (1.0, 0.0)
    assert detection_precision_recall(gt, ["cat"], [], []) == (0.0, 1.0)
    assert detection_precision_recall([], [], [], []) == (1.0, 1.0)
    with pytest.raises(ValueError, match="one label per box"):
        detection_precision_recall(gt, [], gt, ["cat"])
    with pytest.raises(ValueError, match=r"\(boxes, 4\)"):
        detection_precision_recall([(0, 0, 10)], ["cat"], gt, ["cat"])


# ------------------------------------------------------------------ referring expressions
def test_refer_accuracy_and_mean_iou():
    gt = [(0, 0, 10, 10)] * 4
    pred = [(0, 0, 10, 10), None, (0, 0, 10, 5), (0, 0, 10, 4)]  # IoU 1, unparsable, 0.5, 0.4
    assert refer_accuracy(pred, gt) == pytest.approx(2 / 4)
    assert refer_accuracy(pred, gt, threshold=0.3) == pytest.approx(3 / 4)
    assert refer_mean_iou(pred, gt) == pytest.approx((1 + 0 + 0.5 + 0.4) / 4)
    with pytest.raises(ValueError, match="one predicted box"):
        refer_accuracy(pred[:3], gt)
    with pytest.raises(ValueError, match="at least one expression"):
        refer_mean_iou([], [])
