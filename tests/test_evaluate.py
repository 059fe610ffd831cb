"""PaLI-3 evaluation (``pali3_edu.evaluate``) and its pictures (``pali3_edu.viz.pali3``): an
oracle scores 1, garbage scores 0, malformed boxes are misses, a random tiny PaLI3 gives numbers
in range, the image-blind baselines use the same examples, and the plots draw the boxes."""

from __future__ import annotations

import json
from collections import Counter

import matplotlib
import numpy as np
import pytest
import torch

from pali3_edu.data.shapesworld import load_shapesworld
from pali3_edu.data.tasks import TASKS, parse_detection
from pali3_edu.evaluate import (
    BlindGuesser,
    EvalReport,
    blind_baselines,
    eval_examples,
    evaluate,
    train_records,
)

matplotlib.use("Agg")
torch.set_num_threads(1)
N = 4  # examples per task


@pytest.fixture(scope="module")
def data():
    return load_shapesworld("val", 30, image_size=32, word_prob=0.5, cache=False)


class Stub:
    """A model that answers with ``answer(image_key, prompt)``; records what it was asked."""

    image_size = 32

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def predict(self, images, prompts, **kwargs):
        self.calls.append((len(images), kwargs))
        return [self.answer(np.asarray(im).tobytes(), p) for im, p in zip(images, prompts)]


def oracle(data, seed=0, corrupt=lambda task, text: text):
    """Answers every evaluation question with its target (optionally corrupted)."""
    rows = data.remove_columns("image").to_list()
    table = {(np.asarray(data[ex["row"]]["image"]).tobytes(), ex["prefix"]): corrupt(ex["task"], ex["suffix"])
             for ex in eval_examples(rows, TASKS, N, seed)}
    return Stub(lambda key, prompt: table[key, prompt])


def _in_range(report: EvalReport):
    assert set(report.scores) == set(TASKS)
    for task, metrics in report.scores.items():
        for name, value in metrics.items():
            assert value >= 0.0, (task, name, value)
            if name != "cider_d":
                assert value <= 1.0, (task, name, value)


def test_oracle_scores_one(data):
    report = evaluate(oracle(data), n=N, data=data)
    _in_range(report)
    for task, metrics in report.scores.items():
        for name, value in metrics.items():
            if name != "cider_d":
                assert value == 1.0, (task, name, value)
    assert report.scores["caption"]["cider_d"] > 1.0
    assert all(p["correct"] for p in report.predictions)
    assert [p["score"] for p in report.predictions if p["task"] == "refer"] == [1.0] * N
    assert set(report.scores["vqa"]) >= {"accuracy"} and any(k.startswith("accuracy/") for k in report.scores["vqa"])


def test_garbage_scores_zero_and_unparseable_boxes_are_misses(data):
    report = evaluate(Stub(lambda key, prompt: "#"), n=N, data=data)
    _in_range(report)
    for task, metrics in report.scores.items():
        for name, value in metrics.items():
            assert value == 0.0, (task, name, value)  # detect precision too: "#" is a false positive
    assert not any(p["correct"] for p in report.predictions)


def test_half_broken_detection_counts_as_a_miss(data):
    """Right boxes followed by a malformed instance: the whole answer is discarded."""
    broken = oracle(data, corrupt=lambda task, t: t + " ; <loc0001> oops" if task in ("detect", "refer") else t)
    report = evaluate(broken, tasks=("detect", "refer"), n=N, data=data)
    assert report.scores["detect"]["recall"] == 0.0 and report.scores["detect"]["parseable"] == 0.0
    assert report.scores["detect"]["precision"] == 0.0
    assert report.scores["refer"] == {"mean_iou": 0.0, "accuracy@0.5": 0.0, "parseable": 0.0}


def test_detection_counts_boxes_not_scenes(data):
    """Keeping only the first true box: precision 1, recall = scenes / boxes (summed over scenes)."""
    def first_only(task, text):
        return text.split(" ; ")[0]

    report = evaluate(oracle(data, corrupt=first_only), tasks=("detect",), n=N, data=data)
    boxes = sum(len(parse_detection(p["target"]).boxes) for p in report.predictions)
    assert boxes > N  # the data has a scene with two boxes of one class
    assert report.scores["detect"]["precision"] == 1.0
    assert report.scores["detect"]["recall"] == pytest.approx(N / boxes)


def test_tiny_pali3_gives_numbers_in_range(data):
    from pali3_edu.pali3 import PaLI3, PaLI3Config

    torch.manual_seed(0)
    model = PaLI3(PaLI3Config())
    report = evaluate(model, n=2, data=data, batch_size=4)
    _in_range(report)
    assert Counter(p["task"] for p in report.predictions) == {t: 2 for t in TASKS}
    keys = {"task", "scene", "image", "prompt", "prediction", "target", "correct", "score", "kind"}
    assert all(set(p) == keys for p in report.predictions)
    assert all(isinstance(p["correct"], bool) for p in report.predictions)
    assert len(report.table().splitlines()) == len(TASKS)
    json.dumps(report.to_dict())


def test_examples_are_deterministic_and_support_their_task(data):
    a = evaluate(oracle(data), n=N, data=data)
    b = evaluate(oracle(data), n=N, data=data)
    assert a.to_dict() == b.to_dict()
    rows = data.remove_columns("image").to_list()
    for p in a.predictions:
        assert p["scene"] == rows[p["image"]]["seed"]
        if p["task"] == "ocr":
            assert rows[p["image"]]["word"] == p["target"]
        if p["task"] == "vqa":
            assert p["kind"] in {q["kind"] for q in rows[p["image"]]["qa"]}
    # per task, the first N scenes that support it, in order
    ocr_rows = [p["image"] for p in a.predictions if p["task"] == "ocr"]
    assert ocr_rows == [i for i, r in enumerate(rows) if r["word"]][:N]
    assert evaluate(oracle(data, seed=1), n=N, data=data, seed=1).to_dict() != a.to_dict()


def test_evaluate_loads_held_out_scenes_at_the_model_size(tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    seen = []

    def answer(key, prompt):
        seen.append(len(key))
        return ""

    report = evaluate(Stub(answer), split="test", tasks=("ocr", "caption"), n=3)
    assert set(seen) == {32 * 32 * 3}
    assert Counter(p["task"] for p in report.predictions) == {"ocr": 3, "caption": 3}
    assert all(p["scene"] >= 200_000_000 for p in report.predictions)  # the test split's seeds
    assert report.images[report.predictions[0]["image"]].size == (32, 32)


def test_too_few_scenes_for_a_task_warns(data):
    no_words = [dict(r) for r in data.select(range(10)) if not r["word"]]
    with pytest.warns(UserWarning, match="Fewer than n=4 scenes support some tasks"):
        report = evaluate(Stub(lambda key, prompt: ""), tasks=("caption", "ocr"), n=N, data=no_words)
    assert set(report.scores) == {"caption"}


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="Unknown task"):
        evaluate(oracle(data), tasks=("captions",), n=N, data=data)
    with pytest.raises(ValueError, match="n must be a positive int"):
        evaluate(oracle(data), n=0, data=data)
    with pytest.raises(TypeError, match="predict"):
        evaluate(object(), n=N, data=data)


def test_blind_baselines(data):
    report = blind_baselines(n=N, data=data, train_scenes=200)
    _in_range(report)
    same = evaluate(oracle(data), n=N, data=data)
    strip = lambda r: [(p["task"], p["image"], p["prompt"], p["target"]) for p in r.predictions]
    assert strip(report) == strip(same)  # exactly the examples evaluate uses
    assert report.scores["detect"]["parseable"] == 1.0 and report.scores["refer"]["parseable"] == 1.0


def test_blind_guesser_uses_training_priors():
    records = train_records(200)
    guesser = BlindGuesser(records)
    words = Counter(r["word"] for r in records if r["word"])
    assert guesser.answer("ocr") == words.most_common(1)[0][0]
    assert guesser.answer("caption en") == Counter(r["caption"] for r in records).most_common(1)[0][0]
    q = "how many shapes are there?"
    answers = Counter(qa["answer"] for r in records for qa in r["qa"] if qa["question"] == q)
    assert guesser.answer(f"answer en {q}") == answers.most_common(1)[0][0]
    box = parse_detection(guesser.answer("detect circle"))
    circles = [o["box"] for r in records for o in r["objects"] if o["shape"] == "circle"]
    mean = np.mean(circles, axis=0)
    assert box.ok and box.labels == ["circle"] and np.allclose(box.boxes[0], mean, atol=1 / 1023)
    assert parse_detection(guesser.answer("detect red circle")).labels == ["red circle"]


def test_show_predictions_draws_predicted_and_true_boxes(data):
    from matplotlib.patches import Rectangle

    from pali3_edu.viz.pali3 import PRED_COLOR, TRUE_COLOR, select, show_predictions

    shift = lambda task, t: "<loc0000><loc0000><loc0010><loc0010> x" if task == "refer" else t
    report = evaluate(oracle(data, corrupt=shift), n=N, data=data)
    fig = show_predictions(report, report.images, task="refer", k=3)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 3
    for ax in axes:
        colors = [matplotlib.colors.to_hex(p.get_edgecolor()) for p in ax.patches if isinstance(p, Rectangle)]
        assert sorted(colors) == sorted([PRED_COLOR, TRUE_COLOR])
        assert "[box]" in ax.get_xlabel() and "<loc" not in ax.get_xlabel()
    assert len(select(report, "refer", "wrong")) == N and select(report, "refer", "right") == []
    assert len(select(report, None, "right")) == len(TASKS[:-1]) * N
    assert [p["task"] for p in select(report)[: len(TASKS)]] == list(TASKS)  # a page shows every task
    with pytest.raises(ValueError, match="Nothing to show"):
        show_predictions(report, task="refer", only="right")
    with pytest.raises(ValueError, match="only must be one of"):
        select(report, only="correct")
    matplotlib.pyplot.close("all")


def test_prediction_browser_leaves_a_static_figure(data, monkeypatch):
    import IPython.display

    from pali3_edu.viz import pali3 as viz

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    report = evaluate(oracle(data), n=N, data=data)
    widget = viz.prediction_browser(report)
    assert isinstance(shown[0], matplotlib.figure.Figure)  # the static first page, before the widget
    task_w, only_w = widget.children[0].children
    task_w.value, only_w.value = "detect", "wrong"  # nothing wrong: a message, no error
    only_w.value = "right"
    assert widget.children[1].max == N - 1
    matplotlib.pyplot.close("all")
