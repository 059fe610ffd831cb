"""Evaluate a PaLI-3 model on held-out ShapesWorld scenes, task by task.

For each task, ``evaluate`` takes the first ``n`` scenes of a held-out split that support it,
builds one example from each (deterministically: the random choices of
:func:`~pali3_edu.data.tasks.make_example` are seeded by ``(seed, task, scene)``), asks the model
with greedy decoding (``model.predict``) and scores the answers:

=========  ==================================================================================
task       metrics (all in [0, 1] except CIDEr-D, which goes up to 10)
=========  ==================================================================================
caption    ``exact_match`` (the caption equals one of the scene's phrasings), ``cider_d``
           (references: all the scene's phrasings; see :func:`pali3_edu.metrics.cider_d`)
vqa        ``accuracy`` (answer equal to the single true answer after VQA normalisation, so
           "two" = "2"), and ``accuracy/<kind>`` per question kind (color, count, relation …)
ocr        ``exact_match``, ``anls`` (partial credit for near misses)
detect     ``precision``, ``recall`` at IoU 0.5 over all boxes of all scenes (sum of matches /
           sum of boxes, not a mean of per-scene ratios), ``f1``, ``parseable`` (the share of
           outputs that are well-formed detection text)
refer      ``mean_iou`` (an output without a box counts 0), ``accuracy@0.5`` (IoU ≥ 0.5),
           ``parseable``
=========  ==================================================================================

**Unparseable detection output is a miss.** If ``parse_detection`` finds any malformed part,
the whole answer is discarded: it matches no true box and counts as one false positive. (Keeping
the well-formed half of a broken answer would reward a model for writing garbage after it.)
Ground-truth boxes are read from the target text, i.e. quantised to the 1024 location bins the
model writes, so a perfect answer has IoU exactly 1.

:func:`blind_baselines` scores an image-blind guesser on the same examples: what can be got from
the prompt and training-set statistics alone. A model is only "looking" where it beats it.

    report = evaluate(model, "val", n=200)
    print(report.table())
    report.predictions[0]   # {"task", "scene", "image", "prompt", "prediction", "target", ...}
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pali3_edu.data.tasks import (
    TASKS,
    format_detection,
    make_example,
    parse_detection,
    possible_tasks,
)
from pali3_edu.metrics import (
    anls,
    cider_d_scores,
    exact_match,
    match_detections,
    vqa_accuracy,
)

IOU_THRESHOLD = 0.5


@dataclass
class EvalReport:
    """What :func:`evaluate` found.

    - ``scores``: task → metric → value (the metrics in the module docstring);
    - ``predictions``: one dict per example, in task order then scene order, with ``task``,
      ``scene`` (the scene's seed, or its row if the data has no ``seed``), ``image`` (the row in
      the evaluated data, i.e. the index into ``report.images``), ``prompt``, ``prediction``,
      ``target``, ``correct`` (bool), ``score`` (the example's main score: exact match for
      vqa/ocr, CIDEr-D for caption, IoU for refer, matched / max(predicted, true boxes) for
      detect) and ``kind`` (the VQA question kind, else ``None``);
    - ``split``, ``n``, ``seed``: what was evaluated; ``images``: the evaluated scenes' images
      (not saved by ``to_dict``).
    """

    scores: dict[str, dict[str, float]]
    predictions: list[dict[str, Any]]
    split: str = ""
    n: int = 0
    seed: int = 0
    images: Any = field(default=None, repr=False)

    def table(self, digits: int = 3) -> str:
        """One line per task: the number of examples and every metric."""
        width = max((len(t) for t in self.scores), default=4)
        lines = []
        for task, metrics in self.scores.items():
            count = sum(p["task"] == task for p in self.predictions)
            cells = "  ".join(f"{k} {v:.{digits}f}" for k, v in metrics.items())
            lines.append(f"{task:<{width}}  n={count:<4d}  {cells}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:  # a notebook shows the table, not a thousand prediction dicts
        return f"EvalReport(split={self.split!r}, n={self.n}, seed={self.seed})\n{self.table()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"split", "n", "seed", "scores", "predictions"}`` (no images)."""
        return {"split": self.split, "n": self.n, "seed": self.seed,
                "scores": {t: dict(m) for t, m in self.scores.items()},
                "predictions": [dict(p) for p in self.predictions]}


# ---------------------------------------------------------------------------------------------
# Choosing the examples
# ---------------------------------------------------------------------------------------------


def _rows(data: Any) -> list[dict[str, Any]]:
    """Data set rows without their images (a ``datasets.Dataset`` or a list of dicts)."""
    if hasattr(data, "remove_columns") and "image" in getattr(data, "column_names", ()):
        return data.remove_columns("image").to_list()
    return [{k: v for k, v in dict(r).items() if k != "image"} for r in data]


def eval_examples(records: Sequence[dict[str, Any]], tasks: Sequence[str] = TASKS, n: int = 200,
                  seed: int = 0) -> list[dict[str, Any]]:
    """The held-out examples: for each task the first ``n`` records that support it, one example
    each, ``[{"row", "task", "prefix", "suffix"}, …]`` (fewer than ``n`` if the records run out).
    The choices inside an example are seeded by ``(seed, task, row)``."""
    out = []
    supported = [set(possible_tasks(r)) for r in records]
    for task in tasks:
        rows = [i for i, s in enumerate(supported) if task in s][:n]
        for i in rows:
            ex = make_example(records[i], task, random.Random(f"eval/{seed}/{task}/{i}"))
            out.append({"row": i, **ex})
    return out


def load_eval_data(split: str, tasks: Sequence[str], n: int, image_size: int, **shapesworld_kwargs: Any):
    """The first ShapesWorld scenes of ``split`` with at least ``n`` examples of every task.

    Starts with ``4 n`` scenes and doubles until every task has ``n`` supporting scenes (OCR needs
    a written word, which only some scenes carry). Longer data sets extend shorter ones, so the
    examples do not depend on how many rounds this took.
    """
    from pali3_edu.data.shapesworld import MIN_IMAGE_SIZE, load_shapesworld

    num = 4 * n
    while True:
        ds = load_shapesworld(split, num, image_size=max(MIN_IMAGE_SIZE, image_size), **shapesworld_kwargs)
        counts = Counter(t for r in _rows(ds) for t in possible_tasks(r))
        if all(counts[t] >= n for t in tasks) or num >= 64 * n:
            return ds
        num *= 2


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _refer_box(text: str) -> tuple[float, float, float, float] | None:
    """The first box of a well-formed answer with at least one box, else ``None`` (a miss)."""
    parsed = parse_detection(text)
    return parsed.boxes[0] if parsed.ok and parsed.boxes else None


def _score_task(task: str, preds: list[dict[str, Any]], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Fill ``correct``/``score`` of each prediction of one task; return the task's metrics."""
    from pali3_edu.metrics import box_iou

    if task == "caption":
        refs = [list(records[p["image"]]["captions"]) or [p["target"]] for p in preds]
        ciders = cider_d_scores([p["prediction"] for p in preds], refs)
        for p, r, c in zip(preds, refs, ciders):
            p["correct"] = any(exact_match(p["prediction"], x) for x in r)
            p["score"] = c
        return {"exact_match": _mean(p["correct"] for p in preds), "cider_d": _mean(ciders)}
    if task == "vqa":
        for p in preds:
            p["score"] = vqa_accuracy(p["prediction"], [p["target"]])
            p["correct"] = p["score"] == 1.0
        out = {"accuracy": _mean(p["score"] for p in preds)}
        by_kind: dict[str, list[float]] = defaultdict(list)
        for p in preds:
            by_kind[p["kind"] or "?"].append(p["score"])
        out.update({f"accuracy/{k}": _mean(v) for k, v in sorted(by_kind.items())})
        return out
    if task == "ocr":
        for p in preds:
            p["correct"] = bool(exact_match(p["prediction"], p["target"]))
            p["score"] = anls(p["prediction"], [p["target"]])
        return {"exact_match": _mean(p["correct"] for p in preds), "anls": _mean(p["score"] for p in preds)}
    if task == "detect":
        matched = n_pred = n_true = parseable = 0
        for p in preds:
            truth, guess = parse_detection(p["target"]), parse_detection(p["prediction"])
            if guess.ok:
                m = len(match_detections(guess.boxes, guess.labels, truth.boxes, truth.labels, IOU_THRESHOLD))
                k = len(guess.boxes)
            else:  # malformed: no matches, one false positive
                m, k = 0, 1
            parseable += guess.ok
            matched, n_pred, n_true = matched + m, n_pred + k, n_true + len(truth.boxes)
            p["score"] = m / max(k, len(truth.boxes), 1)
            p["correct"] = guess.ok and m == k == len(truth.boxes)
        precision = matched / n_pred if n_pred else 1.0  # nothing predicted: no false positives
        recall = matched / n_true if n_true else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "parseable": parseable / max(len(preds), 1)}
    if task == "refer":
        for p in preds:
            guess, truth = _refer_box(p["prediction"]), _refer_box(p["target"])
            p["score"] = 0.0 if guess is None or truth is None else float(box_iou(guess, truth))
            p["correct"] = p["score"] >= IOU_THRESHOLD
        return {"mean_iou": _mean(p["score"] for p in preds),
                "accuracy@0.5": _mean(p["correct"] for p in preds),
                "parseable": _mean(_refer_box(p["prediction"]) is not None for p in preds)}
    raise ValueError(f"Unknown task {task!r}; the tasks are {', '.join(TASKS)}.")


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


def _question_kind(record: dict[str, Any], prefix: str) -> str | None:
    for qa in record.get("qa") or []:
        if prefix.endswith(" " + qa["question"]):
            return qa.get("kind")
    return None


# ---------------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------------


def evaluate(
    model: Any,
    split: str = "val",
    tasks: Sequence[str] = TASKS,
    n: int = 200,
    *,
    image_size: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    data: Any = None,
    **shapesworld_kwargs: Any,
) -> EvalReport:
    """Score ``model`` on ``n`` held-out scenes per task (see the module docstring).

    Args:
        model: anything with ``predict(images, prompts, batch_size=...) -> list[str]`` and
            ``image_size`` (a :class:`~pali3_edu.pali3.PaLI3`; greedy decoding).
        split: the ShapesWorld split (``"val"``, ``"test"``, ``"compositional"``).
        tasks: which tasks, in report order.
        n: examples per task (one per scene).
        image_size: render the scenes at this size (default: the model's; ``predict`` resizes).
        batch_size: images per ``predict`` call.
        seed: picks the question/class/object of each example.
        data: evaluate on these rows instead (a ``datasets.Dataset`` or a list of dicts with an
            ``image`` and the ShapesWorld columns); ``split`` is then only a label.
        shapesworld_kwargs: ``min_objects``, ``max_objects``, ``word_prob`` for
            ``load_shapesworld`` (use the training settings).
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}; the tasks are {', '.join(TASKS)}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (examples per task), got {n!r}")
    if not hasattr(model, "predict"):
        raise TypeError(f"model must have a predict(images, prompts) method (a PaLI3), got {type(model).__name__}.")
    if data is None:
        data = load_eval_data(split, tasks, n, image_size or int(model.image_size), **shapesworld_kwargs)
    records = _rows(data)
    examples = eval_examples(records, tasks, n, seed)
    short = {t: c for t in tasks if (c := sum(ex["task"] == t for ex in examples)) < n}
    if short:
        warnings.warn(f"Fewer than n={n} scenes support some tasks ({short}); they are scored on what there "
                      "is (a task with 0 is left out of the report). Pass more data.", stacklevel=2)
    image_cache: dict[int, Any] = {}

    def image(row: int) -> Any:
        if row not in image_cache:
            image_cache[row] = data[row]["image"]
        return image_cache[row]

    scores: dict[str, dict[str, float]] = {}
    predictions: list[dict[str, Any]] = []
    for task in tasks:
        todo = [ex for ex in examples if ex["task"] == task]
        if not todo:
            continue
        answers = model.predict([image(ex["row"]) for ex in todo], [ex["prefix"] for ex in todo],
                                batch_size=batch_size)
        if len(answers) != len(todo):
            raise RuntimeError(f"model.predict returned {len(answers)} answers for {len(todo)} prompts.")
        preds = [{
            "task": task,
            "scene": int(records[ex["row"]].get("seed", ex["row"])),
            "image": ex["row"],
            "prompt": ex["prefix"],
            "prediction": str(a),
            "target": ex["suffix"],
            "correct": False,
            "score": 0.0,
            "kind": _question_kind(records[ex["row"]], ex["prefix"]) if task == "vqa" else None,
        } for ex, a in zip(todo, answers)]
        scores[task] = _score_task(task, preds, records)
        predictions += preds
    for p in predictions:
        p["correct"] = bool(p["correct"])
        p["score"] = float(p["score"])
    return EvalReport(scores=scores, predictions=predictions, split=split, n=n, seed=seed, images=_LazyImages(data))


class _LazyImages:
    """``images[i]`` reads row ``i``'s image on demand (so a report does not decode a whole split)."""

    def __init__(self, data: Any):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        return self.data[int(i)]["image"]


# ---------------------------------------------------------------------------------------------
# What a model gets without looking
# ---------------------------------------------------------------------------------------------


_WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


class BlindGuesser:
    """An image-blind "model": answers from the prompt and training-set statistics only.

    - caption → the most common training caption;
    - vqa → the most common training answer to the same question text (the "answer prior"),
      else the most common answer of questions starting with the same two words, else overall;
    - ocr → the most common training word;
    - detect ``<class>`` → one box, the mean training box of that class, labelled ``<class>``;
    - refer ``<colour> <shape>`` → the mean training box of objects with that name (else of
      that shape, else of all objects).
    """

    def __init__(self, train_records: Sequence[dict[str, Any]], image_size: int = 64):
        from pali3_edu.tokens import TASK_PREFIXES

        self.image_size = image_size
        self.prefixes = TASK_PREFIXES
        self.caption = Counter(r["caption"] for r in train_records).most_common(1)[0][0]
        words = Counter(r["word"] for r in train_records if r.get("word"))
        self.word = words.most_common(1)[0][0] if words else ""
        by_question: dict[str, Counter] = defaultdict(Counter)
        by_start: dict[str, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        for r in train_records:
            for qa in r.get("qa") or []:
                by_question[qa["question"]][qa["answer"]] += 1
                by_start[_start(qa["question"])][qa["answer"]] += 1
                overall[qa["answer"]] += 1
        self.answers = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
        self.start_answers = {q: c.most_common(1)[0][0] for q, c in by_start.items()}
        self.overall_answer = overall.most_common(1)[0][0] if overall else ""
        boxes: dict[str, list] = defaultdict(list)
        for r in train_records:
            for o in r.get("objects") or []:
                for key in (o["shape"], f"{o['color']} {o['shape']}", "*"):
                    boxes[key].append(o["box"])
        self.boxes = {k: tuple(sum(b[j] for b in v) / len(v) for j in range(4)) for k, v in boxes.items()}

    def answer(self, prompt: str) -> str:
        vqa, detect = self.prefixes["vqa"] + " ", self.prefixes["detect"] + " "
        if prompt == self.prefixes["caption"]:
            return self.caption
        if prompt == self.prefixes["ocr"]:
            return self.word
        if prompt.startswith(vqa):
            q = prompt[len(vqa):]
            return self.answers.get(q) or self.start_answers.get(_start(q)) or self.overall_answer
        if prompt.startswith(detect):
            name = prompt[len(detect):]
            box = self.boxes.get(name) or self.boxes.get(name.split()[-1]) or self.boxes.get("*", _WHOLE_IMAGE)
            return format_detection([box], [name])
        return ""

    def predict(self, images: Sequence[Any], prompts: Sequence[str] | str, **_: Any) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        return [self.answer(p) for p in prompts]


def _start(question: str) -> str:
    return " ".join(re.findall(r"\w+", question)[:2])


def train_records(num_scenes: int = 2000, **shapesworld_kwargs: Any) -> list[dict[str, Any]]:
    """The first ``num_scenes`` training scenes as records, generated without rendering (fast)."""
    from pali3_edu.data.shapesworld import (
        ShapesWorldConfig,
        generate_scene,
        scene_record,
        split_seeds,
    )

    known = ("min_objects", "max_objects", "word_prob")  # what decides the texts (not the pixels)
    cfg = ShapesWorldConfig(**{k: v for k, v in shapesworld_kwargs.items() if k in known})
    return [scene_record(generate_scene(s, cfg, "train"), with_image=False) for s in split_seeds("train", num_scenes)]


def blind_baselines(
    split: str = "val",
    n: int = 200,
    *,
    tasks: Sequence[str] = TASKS,
    train_scenes: int = 2000,
    image_size: int = 64,
    seed: int = 0,
    data: Any = None,
    **shapesworld_kwargs: Any,
) -> EvalReport:
    """What an image-blind guesser (:class:`BlindGuesser`, statistics of ``train_scenes`` training
    scenes) scores on exactly the examples ``evaluate(model, split, tasks, n, seed=seed)`` uses.

    Only boxes, parse rates and CIDEr-D differ in kind from the model's numbers; every metric
    means the same. ``image_size`` only picks which cached renders are loaded (images are unused).
    """
    guesser = BlindGuesser(train_records(train_scenes, **shapesworld_kwargs), image_size=image_size)
    return evaluate(guesser, split, tasks, n, image_size=image_size, seed=seed, data=data, **shapesworld_kwargs)


__all__ = [
    "IOU_THRESHOLD",
    "BlindGuesser",
    "EvalReport",
    "blind_baselines",
    "eval_examples",
    "evaluate",
    "load_eval_data",
    "train_records",
]
