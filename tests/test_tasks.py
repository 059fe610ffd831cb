"""PaLI task formats, the <loc> box codec and the detection parser."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pali3_edu import tokens
from pali3_edu.data.shapesworld import ShapesWorldConfig, generate_scene, scene_record
from pali3_edu.data.tasks import (
    NUM_LOC_BINS,
    PREFIXES,
    TASKS,
    DetectionResult,
    decode_box,
    encode_box,
    format_detection,
    make_example,
    parse_detection,
    possible_tasks,
)

HALF_BIN = 0.5 / (NUM_LOC_BINS - 1)


def _record(seed: int = 0, **cfg) -> dict:
    return scene_record(generate_scene(seed, ShapesWorldConfig(**cfg)), with_image=False)


def test_encode_box_known_values():
    assert encode_box((0, 0, 1, 1)) == "<loc0000><loc0000><loc1023><loc1023>"
    assert encode_box((0.1, 0.25, 0.5, 0.75)) == "<loc0102><loc0256><loc0512><loc0767>"
    assert decode_box("<loc0000><loc0512><loc1023><loc1023>") == (0.0, 512 / 1023, 1.0, 1.0)


coords = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(coords, coords, coords, coords)
def test_loc_round_trip_within_half_a_bin(a, b, c, d):
    box = (min(a, c), min(b, d), max(a, c), max(b, d))
    decoded = decode_box(encode_box(box))
    assert all(abs(x - y) <= HALF_BIN + 1e-12 for x, y in zip(box, decoded))
    assert encode_box(decoded) == encode_box(box)  # decoding lands on the bin's own value


@pytest.mark.parametrize("box, message", [
    ((0.1, 0.2, 1.2, 0.5), "y1=1.2 is outside"),
    ((-0.01, 0.2, 0.5, 0.5), "y0=-0.01 is outside"),
    ((0.6, 0.2, 0.5, 0.5), "y1=0.5 < y0=0.6"),
    ((0.1, 0.7, 0.5, 0.5), "x1=0.5 < x0=0.7"),
    ((0.1, 0.2, 0.5), "4 values"),
    ((0.1, float("nan"), 0.5, 0.5), "outside"),
    ("abcd", "four numbers"),
])
def test_encode_box_rejects_bad_boxes(box, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        encode_box(box)


@pytest.mark.parametrize("text", [
    "", "<loc0001><loc0002><loc0003>", "<loc0001><loc0002><loc0003><loc0004><loc0005>",
    "<loc1024><loc0000><loc0000><loc0000>", "<loc01><loc0002><loc0003><loc0004>",
    "<loc0001> <loc0002><loc0003><loc0004>", "circle",
])
def test_decode_box_rejects_malformed(text):
    with pytest.raises(ValueError, match="four tokens"):
        decode_box(text)


def test_parse_well_formed_detection():
    boxes = [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 1.0)]
    text = format_detection(boxes, ["red circle", "square"])
    assert text.count(" ; ") == 1
    res = parse_detection(text)
    assert res.ok and res.error is None and res.labels == ["red circle", "square"]
    for got, want in zip(res.boxes, boxes):
        assert all(abs(g - w) <= HALF_BIN for g, w in zip(got, want))
    assert parse_detection("") == DetectionResult([], [], True, None)  # nothing detected


@pytest.mark.parametrize("text, message", [
    ("<loc0001><loc0002><loc0003> circle", "expected 4"),
    ("<loc0001><loc0002><loc0003><loc0004>", "no label"),
    ("<loc0001><loc0002><loc0003><loc0004><loc0005> circle", "more than 4"),
    ("<loc0009><loc0002><loc0003><loc0004> circle", "y1 < y0"),
    ("<loc1500><loc0002><loc1600><loc0004> circle", "bin 1600"),
    ("<loc0001><loc0002><loc0003><loc0004> circle ;", "empty"),
    ("a red circle", "expected 4"),
])
def test_parse_malformed_detection_explains(text, message):
    res = parse_detection(text)
    assert not res.ok and message in res.error


def test_parse_keeps_the_good_instances():
    res = parse_detection("<loc0001><loc0002><loc0003><loc0004> circle ; junk")
    assert not res.ok and res.labels == ["circle"] and len(res.boxes) == 1


loc_ish = st.sampled_from(["<loc", ">", "<loc0000>", "<loc1023>", "<loc0512>", "<loc9999>", ";", " ",
                           "circle", "red", "<loc12>", "\n", "<", "</s>", "<pad>", "<unk>",
                           "<loc\u0661\u0662\u0663\u0664>", "[NLU]", "<extra_id_0>"])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(loc_ish, max_size=20).map("".join)))
def test_parse_detection_never_raises(text):
    res = parse_detection(text)
    assert isinstance(res, DetectionResult)
    assert len(res.boxes) == len(res.labels)
    assert res.ok == (res.error is None)
    for box in res.boxes:
        assert all(0.0 <= v <= 1.0 for v in box) and box[0] <= box[2] and box[1] <= box[3]


def test_parse_detection_non_string():
    assert not parse_detection(None).ok  # type: ignore[arg-type]


def test_make_example_formats():
    rec = _record(3, min_objects=3, max_objects=3, word_prob=1.0)
    rng = random.Random(0)
    cap = make_example(rec, "caption", rng)
    assert cap == {"prefix": "caption en", "suffix": rec["caption"], "task": "caption"}
    assert make_example(rec, "caption", rng, caption="random")["suffix"] in rec["captions"]
    for _ in range(20):
        ex = make_example(rec, "vqa", rng)
        assert ex["prefix"].startswith("answer en ")
        assert {"question": ex["prefix"][len("answer en "):], "answer": ex["suffix"]} in [
            {"question": q["question"], "answer": q["answer"]} for q in rec["qa"]]
    assert make_example(rec, "ocr", rng) == {"prefix": "ocr", "suffix": rec["word"], "task": "ocr"}


def test_detect_and_refer_targets_decode_to_the_objects():
    rng = random.Random(1)
    for seed in range(30):
        rec = _record(seed, max_objects=5)
        det = make_example(rec, "detect", rng)
        label = det["prefix"].removeprefix("detect ")
        want = sorted(o["box"] for o in rec["objects"] if o["shape"] == label)
        res = parse_detection(det["suffix"])
        assert res.ok and set(res.labels) == {label} and len(res.boxes) == len(want)
        for got, w in zip(res.boxes, want):  # reading order = sorted by (y0, x0)
            assert all(abs(g - v) <= HALF_BIN + 1e-6 for g, v in zip(got, w))
        try:
            ref = make_example(rec, "refer", rng)
        except ValueError:
            continue
        name = ref["prefix"].removeprefix("detect ")
        matches = [o for o in rec["objects"] if f"{o['color']} {o['shape']}" == name]
        assert len(matches) == 1
        res = parse_detection(ref["suffix"])
        assert res.ok and res.labels == [name]
        assert all(abs(g - v) <= HALF_BIN + 1e-6 for g, v in zip(res.boxes[0], matches[0]["box"]))


def test_make_example_errors():
    rec = _record(0, word_prob=0.0)
    with pytest.raises(ValueError, match="caption, vqa, ocr, detect, refer"):
        make_example(rec, "segment", random.Random(0))
    with pytest.raises(ValueError, match="no written word"):
        make_example(rec, "ocr", random.Random(0))
    assert "ocr" not in possible_tasks(rec) and "caption" in possible_tasks(rec)
    twins = dict(rec, objects=[rec["objects"][0], dict(rec["objects"][0], box=[0.5, 0.5, 0.9, 0.9])])
    with pytest.raises(ValueError, match="unique name"):
        make_example(twins, "refer", random.Random(0))
    assert TASKS == ("caption", "vqa", "ocr", "detect", "refer")


# ------------------------------------------------------------------ digits, special tokens, inverted boxes
NON_ASCII_DIGITS = [
    "\u0660\u0661\u0662\u0663",  # Arabic-Indic ٠١٢٣
    "\u06f0\u06f1\u06f2\u06f3",  # Extended Arabic-Indic ۰۱۲۳
    "\u0966\u0967\u0968\u0969",  # Devanagari ०१२३
    "\uff10\uff11\uff12\uff13",  # full-width ０１２３
]


@pytest.mark.parametrize("digits", NON_ASCII_DIGITS)
def test_non_ascii_digits_are_not_location_tokens(digits):
    assert int(digits) == 123  # what int() does with them, and why \d was a bug
    text = f"<loc{digits}><loc0200><loc0300><loc0400> circle"
    res = parse_detection(text)
    assert not res.ok and res.boxes == [] and res.labels == [] and "expected 4" in res.error
    with pytest.raises(ValueError, match="four tokens"):
        decode_box(f"<loc{digits}><loc0200><loc0300><loc0400>")
    good = parse_detection(f"<loc0100><loc0200><loc0300><loc0400> star ; {text}")
    assert not good.ok and good.labels == ["star"]  # the good instance is kept


@pytest.mark.parametrize("text", [
    "<loc0001><loc0002><loc0003><loc0004> circle</s>",
    "<loc0001><loc0002><loc0003><loc0004> circle</s><pad>",
    "<loc0001><loc0002><loc0003><loc0004> circle </s><pad><pad>",
    "<pad><loc0001><loc0002><loc0003><loc0004> circle</s><pad>",
    "<loc0001><loc0002><loc0003><loc0004> circle</s> what the model wrote after EOS",
    "<loc0001><loc0002><loc0003><loc0004> circle<pad><pad>",
])
def test_generation_markers_are_not_part_of_the_label(text):
    """Text decoded with skip_special_tokens=False: the output ends at </s>, pads are dropped."""
    res = parse_detection(text)
    assert res.ok and res.labels == ["circle"], res
    assert res.boxes == [decode_box("<loc0001><loc0002><loc0003><loc0004>")]


@pytest.mark.parametrize("label, token", [
    ("circle<unk>", "<unk>"),
    ("red [NLU] circle", "[NLU]"),
    ("circle <extra_id_0>", "<extra_id_0>"),
    ("<seg012> circle", "<seg012>"),
    ("red<pad>circle", "<pad>"),
])
def test_special_tokens_in_labels_make_the_instance_invalid(label, token):
    text = f"<loc0001><loc0002><loc0003><loc0004> {label} ; <loc0010><loc0020><loc0030><loc0040> star"
    res = parse_detection(text)
    assert not res.ok and f"special token {token!r}" in res.error
    assert res.labels == ["star"] and len(res.boxes) == 1  # never raises, keeps the good instance


@pytest.mark.parametrize("text, which", [
    ("<loc0009><loc0002><loc0003><loc0004>", "y1 < y0"),
    ("<loc0001><loc0009><loc0003><loc0004>", "x1 < x0"),
    (" <loc1023><loc1023><loc0000><loc0000> ", "y1 < y0"),
])
def test_decode_box_rejects_inverted_boxes(text, which):
    with pytest.raises(ValueError, match=f"inverted box: {which}"):
        decode_box(text)
    assert not parse_detection(text + " circle").ok  # the parser reports it instead of raising


def test_decode_box_accepts_degenerate_boxes():
    assert decode_box("<loc0005><loc0005><loc0005><loc0005>") == (5 / 1023,) * 4  # a point is fine


def test_decode_box_rejects_non_strings():
    with pytest.raises(TypeError, match="str"):
        decode_box(None)  # type: ignore[arg-type]


def test_task_formats_use_the_shared_token_facts():
    assert NUM_LOC_BINS == tokens.NUM_LOC_BINS
    assert PREFIXES == tokens.TASK_PREFIXES and TASKS == tuple(tokens.TASK_PREFIXES)
    rng = random.Random(0)
    rec = _record(3, min_objects=3, max_objects=3, word_prob=1.0)
    for task in TASKS:
        try:
            ex = make_example(rec, task, rng)
        except ValueError:
            continue
        assert ex["prefix"].startswith(tokens.TASK_PREFIXES[task])
