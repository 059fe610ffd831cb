"""Evaluation metrics, one small function per metric.

Sections follow the tasks of the course:

- **retrieval / zero-shot** (lesson 04, SigLIP): :func:`recall_at_k`, :func:`zero_shot_predict`,
  :func:`zero_shot_accuracy`;
- **captioning**: :func:`cider_d` (CIDEr-D, the "CIDEr" of the COCO leaderboard and of PaLI),
  :func:`cider_d_scores`, :func:`coco_tokenize`;
- **question answering**: :func:`vqa_accuracy` (VQAv2, OK-VQA, TextVQA), :func:`anls`
  (DocVQA, ST-VQA, InfographicVQA), :func:`exact_match` (single-answer sets such as GQA);
- **boxes**: :func:`box_iou`, :func:`detection_precision_recall` (object detection),
  :func:`refer_accuracy` and :func:`refer_mean_iou` (referring expressions, RefCOCO).

Everything takes plain tensors, strings or sequences and returns Python floats, so a notebook
can print the result directly. Scores are on a 0–1 scale (CIDEr: 0–10, see :func:`cider_d`);
papers usually print them ×100.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Retrieval and zero-shot classification
# ---------------------------------------------------------------------------------------------


def _relevance_matrix(targets: Tensor | Sequence, num_queries: int, num_items: int) -> Tensor:
    """Turn ``targets`` into a boolean ``(queries, items)`` matrix of relevant items.

    ``targets`` is either one correct item index per query (``(queries,)`` integers) or already a
    ``(queries, items)`` boolean matrix (several correct items per query, e.g. an image with
    five captions).
    """
    targets = torch.as_tensor(targets)
    if targets.dtype == torch.bool:
        if targets.shape != (num_queries, num_items):
            raise ValueError(
                f"A boolean targets matrix must have shape (queries, items) = "
                f"{(num_queries, num_items)}, got {tuple(targets.shape)}."
            )
        return targets
    if targets.ndim != 1 or targets.shape[0] != num_queries:
        raise ValueError(
            f"targets must hold one item index per query, shape ({num_queries},), "
            f"got {tuple(targets.shape)}. For several correct items pass a boolean "
            "(queries, items) matrix."
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"target indices must lie in [0, {num_items}), got {targets.tolist()}.")
    relevant = torch.zeros(num_queries, num_items, dtype=torch.bool)
    relevant[torch.arange(num_queries), targets.long()] = True
    return relevant


def recall_at_k(similarity: Tensor, targets: Tensor | Sequence, k: int = 1) -> float:
    """Fraction of queries with at least one correct item among their ``k`` most similar items.

    Args:
        similarity: ``(queries, items)`` scores, higher = more similar. For image→text retrieval
            the rows are images and the columns captions; for text→image pass ``similarity.T``.
        targets: the correct item of each query, ``(queries,)`` indices, or a boolean
            ``(queries, items)`` matrix when a query has several correct items.
        k: how many top items count as retrieved.

    >>> recall_at_k(torch.tensor([[0.9, 0.1], [0.8, 0.3]]), [0, 1], k=1)
    0.5
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (queries, items), got shape {tuple(similarity.shape)}")
    q, n = similarity.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    relevant = _relevance_matrix(targets, q, n).to(similarity.device)
    top = similarity.topk(min(k, n), dim=1).indices  # (queries, k)
    hit = relevant.gather(1, top).any(dim=1)  # (queries,)
    return hit.float().mean().item()


def zero_shot_predict(image_emb: Tensor, class_emb: Tensor, aggregate: str = "mean") -> Tensor:
    """Class index per image: the class whose text embedding(s) are most similar.

    ``image_emb`` is ``(images, dim)``. ``class_emb`` is either ``(classes, dim)`` (one embedding
    per class) or ``(classes, prompts, dim)`` (several prompts per class), combined by
    ``aggregate``:

    - ``"mean"``: prompt ensembling as in CLIP — average each class's prompt embeddings,
      re-normalise, then compare: one embedding per class.
    - ``"max"``: score each class by its *best-matching* prompt (the class of the most similar
      prompt wins). Better when the prompts of a class differ in a strong attribute that the
      average would wash out (lesson 04: colour dominates shape).

    Embeddings should be L2 normalised (cosine similarity). SigLIP's ``t`` and ``b`` are monotone,
    so they do not change the arg-max and are not needed here.
    """
    if image_emb.shape[-1] != class_emb.shape[-1]:
        raise ValueError(
            f"Embedding sizes differ: images {image_emb.shape[-1]}, classes {class_emb.shape[-1]}."
        )
    if class_emb.ndim == 3:
        if aggregate == "mean":
            class_emb = torch.nn.functional.normalize(class_emb.mean(dim=1), dim=-1)
        elif aggregate == "max":
            sims = torch.einsum("nd,cpd->ncp", image_emb, class_emb)  # (images, classes, prompts)
            return sims.amax(dim=-1).argmax(dim=-1)
        else:
            raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    return (image_emb @ class_emb.T).argmax(dim=-1)


def zero_shot_accuracy(
    image_emb: Tensor, class_emb: Tensor, labels: Tensor | Sequence[int], aggregate: str = "mean"
) -> float:
    """Accuracy of :func:`zero_shot_predict` against ``labels`` (``(images,)`` class indices)."""
    labels = torch.as_tensor(labels, device=image_emb.device)
    if labels.shape != image_emb.shape[:1]:
        raise ValueError(f"Need one label per image: {image_emb.shape[0]} images, {labels.shape} labels.")
    return (zero_shot_predict(image_emb, class_emb, aggregate) == labels).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Captioning: CIDEr-D
# ---------------------------------------------------------------------------------------------

_CLITIC = re.compile(r"(n't|'s|'re|'ve|'ll|'d|'m)\b")
_COCO_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.']\w+)*|[^\w\s]")
_COCO_PUNCTUATION = set(".?!,:;-'`\"()[]{}")  # tokens the COCO evaluation throws away


def coco_tokenize(caption: str) -> str:
    """Lower-case and tokenise a caption like the COCO caption evaluation; tokens joined by spaces.

    The official pipeline runs Stanford's PTB tokenizer (Java) and then drops punctuation tokens.
    This is a small regex version with the same effect on ordinary captions: lower-case, split
    off clitics (``"don't" → "do n't"``, ``"dog's" → "dog 's"``), keep hyphenated words and
    decimals whole (``"black-and-white"``, ``"3.5"``), drop ``. , ? ! : ; - ' " ( ) [ ] { }``
    and backquotes, keep other symbols (``&``, ``$``) as tokens of their own. It differs from PTB
    on rarer text: abbreviations keep no final period (PTB: ``"mr."``), and PTB's special cases
    (URLs, emoticons, fractions) are not handled. Tokenising twice changes nothing.

    >>> coco_tokenize("A man's black-and-white dog, isn't it?")
    "a man 's black-and-white dog is n't it"
    """
    tokens = _COCO_TOKEN.findall(_CLITIC.sub(r" \1", caption.lower()))
    return " ".join(t for t in tokens if t not in _COCO_PUNCTUATION)


def _ngram_counts(caption: str, n: int) -> Counter:
    words = caption.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: bool = True,
    n: int = 4,
    sigma: float = 6.0,
) -> list[float]:
    """CIDEr-D of each predicted caption against its references (one float per image).

    CIDEr (Vedantam, Zitnick & Parikh, "CIDEr: Consensus-based Image Description Evaluation",
    CVPR 2015) asks: does the caption use the same *informative* n-grams as the humans did?

    1. Each caption becomes, for every n in 1..4, a vector of n-gram counts weighted by
       inverse document frequency, ``idf(g) = log(#images) − log(max(1, df(g)))``, where
       ``df(g)`` is the number of images whose references contain ``g``. "a", "of the" … appear
       everywhere and weigh ~0; "giraffe" weighs a lot. The idf comes from the references *of the
       evaluated set*, so scores on different sets are not comparable, and one image alone
       scores 0 (every n-gram is in "all" images).
    2. Per reference r and n, the "-D" variant (made harder to game; the one the COCO server and
       papers report as "CIDEr") takes the clipped cosine ``Σ_g min(h_g, r_g)·r_g / (‖h‖·‖r‖)``
       (repeating a good word does not help) times
       a Gaussian length penalty ``exp(−(len_h − len_r)² / (2σ²))`` with σ = 6.
    3. Average over references and over n, multiply by 10.

    The result equals ``pycocoevalcap.cider.cider.Cider().compute_score`` on the same tokens
    (pycocoevalcap measures lengths in bigrams, words − 1; the difference of two lengths is the
    same whenever both captions are non-empty, and with an empty one the score is 0 anyway).

    Args:
        predictions: one generated caption per image, ``(images,)`` strings.
        references: the human captions of each image, ``(images, refs_of_that_image)`` strings.
        tokenize: run :func:`coco_tokenize` first; pass ``False`` for pre-tokenised text.
    """
    if isinstance(predictions, str) or any(isinstance(r, str) for r in references):
        raise TypeError("Pass a list of predictions and, per image, a list of reference captions "
                        "(e.g. [['a dog runs']] for one image with one reference).")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"Need one prediction per image and at least one image: got "
                         f"{len(predictions)} predictions for {len(references)} reference lists.")
    if any(len(r) == 0 for r in references):
        raise ValueError("Every image needs at least one reference caption.")
    prep = coco_tokenize if tokenize else (lambda s: s)
    hyps = [_ngram_counts(prep(p), n) for p in predictions]
    refs = [[_ngram_counts(prep(r), n) for r in rs] for rs in references]
    doc_freq = Counter(g for rs in refs for g in set().union(*rs))
    log_images = math.log(len(refs))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]  # one {n-gram: weight} per n
        for g, tf in counts.items():
            vec[len(g) - 1][g] = tf * (log_images - math.log(max(1.0, doc_freq[g])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        return vec, norms, sum(counts[g] for g in vec[0])  # length in words

    scores = []
    for hyp, rs in zip(hyps, refs):
        h_vec, h_norm, h_len = tfidf(hyp)
        total = 0.0
        for ref in rs:
            r_vec, r_norm, r_len = tfidf(ref)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in h_vec[k].items())
                total += (dot / (h_norm[k] * r_norm[k]) if h_norm[k] and r_norm[k] else 0.0) * penalty
        scores.append(10.0 * total / (n * len(rs)))
    return scores


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_d_scores` over images.

    Returned on pycocoevalcap's scale (at most 10; strong COCO captioners score ~1.2–1.5);
    papers print it ×100, so a reported "CIDEr 145.9" is 1.459 here.

    >>> cider_d(["a big red circle", "a small blue square"], [["a big red circle"], ["a small blue square"]])
    10.0
    >>> cider_d(["a red circle", "a blue square"], [["a red circle"], ["a blue square"]])  # no 4-grams
    7.500000000000001
    """
    scores = cider_d_scores(predictions, references, tokenize)
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------------
# Question answering: VQA accuracy, ANLS, exact match
# ---------------------------------------------------------------------------------------------

_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
              ",", "?", "!"]
_VQA_COMMA_IN_NUMBER = re.compile(r"\d,\d")
_VQA_PERIOD = re.compile(r"\.(?!\d)")  # what the official regex "(?!<=\d)(\.)(?!\d)" really does
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_CONTRACTIONS = {  # a subset of the official table: apostrophe-less spelling → with apostrophe
    w.replace("'", ""): w
    for w in [
        "aren't", "can't", "couldn't", "didn't", "doesn't", "don't", "hadn't", "hasn't", "haven't",
        "isn't", "shouldn't", "wasn't", "weren't", "won't", "wouldn't", "i'm", "i've", "i'd", "i'll",
        "you're", "you've", "they're", "we're", "he's", "she's", "that's", "there's", "what's",
        "where's", "who's", "let's",
    ]
}


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer like the official VQA evaluation script.

    Punctuation from ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted if it touches a
    space (or the answer has a digit-comma-digit, "3,000") and otherwise becomes a space
    ("black-white" → "black white"); a period is removed unless a digit follows ("3.5" stays);
    then lower-case, number words → digits ("two" → "2", "none" → "0"), articles a/an/the
    dropped, and common apostrophe-less contractions restored ("dont" → "don't"; a subset of the
    official table).

    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    glue = _VQA_COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if glue or p + " " in text or " " + p in text else " ")
    words = [_VQA_NUMBERS.get(w, w) for w in _VQA_PERIOD.sub("", out).lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer (Antol et al., "VQA: Visual Question Answering", 2015).

    An answer counts as fully right if at least 3 of the human annotators gave it:
    ``acc = min(1, #humans that said it / 3)``. With 10 (or more) answers, as in VQAv2,
    OK-VQA, TextVQA and VizWiz, the official script averages this over the 10 subsets that leave
    one annotator out (so a human can be scored the same way), which gives:

    ====================  ===  ===  ===  ===  ====
    humans that agree       0    1    2    3    ≥4
    accuracy                0  0.3  0.6  0.9   1.0
    ====================  ===  ===  ===  ===  ====

    With fewer than 10 answers there is no leave-one-out and the bar of 3 becomes
    ``min(3, #answers)``: ``min(1, matches / min(3, #answers))``, so a single reference
    answer (GQA style) means exact match after normalisation.

    Prediction and every answer go through :func:`normalize_vqa_answer` (the official script
    normalises the annotations less, because they were cleaned when the dataset was made).
    A corpus score is the mean over questions; papers print it ×100.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("answers must be a non-empty list of strings (one per annotator), e.g. ['2'].")
    pred = normalize_vqa_answer(prediction)
    hits = [normalize_vqa_answer(a) == pred for a in answers]
    if len(hits) >= 10:
        return sum(min(1.0, (sum(hits) - h) / 3) for h in hits) / len(hits)
    return min(1.0, sum(hits) / min(3, len(hits)))


def levenshtein(a: str, b: str) -> int:
    """Edit distance: fewest single-character insertions, deletions and substitutions turning
    ``a`` into ``b`` (dynamic programming, one row at a time)."""
    prev = list(range(len(b) + 1))  # distance from a[:0] to each prefix of b
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one answer (Biten et al., "Scene Text Visual
    Question Answering", ICCV 2019); used by ST-VQA, DocVQA, InfographicVQA.

    OCR-heavy answers are often *almost* right ("l0ndon"), so ANLS gives partial credit. Per
    ground truth, on lower-cased stripped strings,
    ``NL = levenshtein(pred, gt) / max(len(pred), len(gt))``, and the score is ``1 − NL`` if
    ``NL < threshold`` (0.5) else 0 — a mostly wrong answer gets nothing rather than a little.
    The answer's score is the best over ground truths; the corpus ANLS is the mean over questions.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("answers must be a non-empty list of strings, e.g. ['london'].")
    pred = prediction.strip().lower()
    best = 0.0
    for gt in answers:
        gt = gt.strip().lower()
        nl = levenshtein(pred, gt) / max(len(pred), len(gt), 1)  # two empty strings: NL = 0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def exact_match(prediction: str, answer: str) -> float:
    """1.0 if the strings are equal after lower-casing, stripping and collapsing whitespace."""
    return float(" ".join(prediction.lower().split()) == " ".join(answer.lower().split()))


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


def box_iou(box_a: Tensor | Sequence[float], box_b: Tensor | Sequence[float]) -> Tensor | float:
    """Intersection over union, ``area(A ∩ B) / area(A ∪ B)``, of ``(y0, x0, y1, x1)`` boxes
    (PaLI's order, y before x). 1 = same box, 0 = no overlap.

    Plain sequences give a float; tensors ``(..., 4)`` broadcast and give a tensor ``(...)``.
    Empty or inverted boxes have zero area; two empty boxes have IoU 0.
    """
    as_float = not isinstance(box_a, Tensor) and not isinstance(box_b, Tensor)
    a, b = torch.as_tensor(box_a), torch.as_tensor(box_b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = torch.float64 if as_float else torch.promote_types(dtype, torch.float32)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError("Boxes must have 4 coordinates (y0, x0, y1, x1) in the last dimension.")
    y0 = torch.maximum(a[..., 0], b[..., 0])
    x0 = torch.maximum(a[..., 1], b[..., 1])
    y1 = torch.minimum(a[..., 2], b[..., 2])
    x1 = torch.minimum(a[..., 3], b[..., 3])
    inter = (y1 - y0).clamp(min=0) * (x1 - x0).clamp(min=0)

    def area(box: Tensor) -> Tensor:
        return (box[..., 2] - box[..., 0]).clamp(min=0) * (box[..., 3] - box[..., 1]).clamp(min=0)

    union = area(a) + area(b) - inter
    out = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
    return out.item() if as_float else out


iou = box_iou  # the name this function had first


def _as_boxes(boxes: Tensor | Sequence[Sequence[float]], name: str) -> Tensor:
    t = torch.as_tensor(boxes, dtype=torch.float64).cpu()
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(
            f"{name} must be a list of (y0, x0, y1, x1) boxes, shape (boxes, 4); got {tuple(t.shape)}."
        )
    return t


def match_detections(
    pred_boxes: Tensor | Sequence[Sequence[float]],
    pred_labels: Sequence,
    gt_boxes: Tensor | Sequence[Sequence[float]],
    gt_labels: Sequence,
    iou_threshold: float = 0.5,
) -> list[tuple[int, int]]:
    """Pair predicted with ground-truth boxes one-to-one: ``[(pred_index, gt_index), ...]``.

    Greedy: among all pairs with the same label and IoU ≥ ``iou_threshold``, take the pair with
    the highest IoU, remove both boxes, repeat (ties: earlier prediction, then earlier ground
    truth first). A box is matched at most once, so predicting the same object twice gives one
    true and one false positive. Boxes are ``(boxes, 4)`` in ``(y0, x0, y1, x1)``.
    """
    pred, gt = _as_boxes(pred_boxes, "pred_boxes"), _as_boxes(gt_boxes, "gt_boxes")
    pred_labels = pred_labels.tolist() if isinstance(pred_labels, Tensor) else list(pred_labels)
    gt_labels = gt_labels.tolist() if isinstance(gt_labels, Tensor) else list(gt_labels)
    if len(pred_labels) != len(pred) or len(gt_labels) != len(gt):
        raise ValueError(f"Need one label per box: {len(pred)} predicted boxes with {len(pred_labels)} "
                         f"labels, {len(gt)} ground-truth boxes with {len(gt_labels)} labels.")
    ious = box_iou(pred[:, None], gt[None]).tolist()  # (preds, gts)
    candidates = sorted(
        ((ious[i][j], i, j) for i in range(len(pred)) for j in range(len(gt))
         if pred_labels[i] == gt_labels[j] and ious[i][j] >= iou_threshold),
        key=lambda c: -c[0],
    )
    used_pred, used_gt, matches = set(), set(), []
    for _, i, j in candidates:
        if i not in used_pred and j not in used_gt:
            used_pred.add(i)
            used_gt.add(j)
            matches.append((i, j))
    return matches


def detection_precision_recall(
    pred_boxes: Tensor | Sequence[Sequence[float]],
    pred_labels: Sequence,
    gt_boxes: Tensor | Sequence[Sequence[float]],
    gt_labels: Sequence,
    iou_threshold: float = 0.5,
) -> tuple[float, float]:
    """Precision and recall of one image's detections at an IoU threshold.

    ``precision = matched / #predicted`` (how many predicted boxes are real objects) and
    ``recall = matched / #ground truth`` (how many objects were found), with matches from
    :func:`match_detections`. Nothing predicted gives precision 1.0, nothing to find gives
    recall 1.0 (no mistakes of that kind were possible). PaLI writes boxes as text without
    confidence scores, so there is no ranking to compute COCO's mAP from; for a whole data set,
    add up the matches and box counts of :func:`match_detections` over images instead of
    averaging these per-image ratios.
    """
    matched = len(match_detections(pred_boxes, pred_labels, gt_boxes, gt_labels, iou_threshold))
    n_pred, n_gt = len(pred_labels), len(gt_labels)
    return (matched / n_pred if n_pred else 1.0), (matched / n_gt if n_gt else 1.0)


def _refer_ious(
    pred_boxes: Sequence[Sequence[float] | None], gt_boxes: Sequence[Sequence[float]]
) -> list[float]:
    if len(pred_boxes) != len(gt_boxes) or len(gt_boxes) == 0:
        raise ValueError(f"Need one predicted box (or None) per expression and at least one expression: "
                         f"got {len(pred_boxes)} predictions for {len(gt_boxes)} ground-truth boxes.")
    return [0.0 if p is None else float(box_iou(p, g)) for p, g in zip(pred_boxes, gt_boxes)]


def refer_accuracy(
    pred_boxes: Sequence[Sequence[float] | None], gt_boxes: Sequence[Sequence[float]], threshold: float = 0.5
) -> float:
    """Referring-expression accuracy (RefCOCO, "Acc@0.5"): fraction of expressions whose
    predicted box has IoU ≥ ``threshold`` with the ground truth.

    One ``(y0, x0, y1, x1)`` box per expression; ``None`` marks an output that could not be
    parsed into a box and counts as IoU 0.
    """
    return sum(v >= threshold for v in _refer_ious(pred_boxes, gt_boxes)) / len(gt_boxes)


def refer_mean_iou(
    pred_boxes: Sequence[Sequence[float] | None], gt_boxes: Sequence[Sequence[float]]
) -> float:
    """Mean over expressions of the IoU between predicted and ground-truth box (``None`` → 0).

    This is the per-expression mean ("mIoU"), not the cumulative IoU (total intersection over
    total union) some segmentation papers report, which weighs large objects more.
    """
    ious = _refer_ious(pred_boxes, gt_boxes)
    return sum(ious) / len(ious)
