"""Hub loaders: tiny local data sets with the public column layouts, mapped into the course schema.

No network: each test builds a 2-3 row ``datasets.Dataset`` with the same features as the hub one.
"""

from __future__ import annotations

import random

import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from pali3_edu.data import hub
from pali3_edu.data.tasks import make_example, parse_detection


def _img(w: int, h: int, color=(200, 10, 10)) -> PILImage.Image:
    return PILImage.new("RGB", (w, h), color)


COURSE_COLUMNS = ["image", "id", "caption", "captions", "qa", "objects", "word", "word_box", "source"]


def test_coco_captions_groups_rows_by_image():
    sent = {"tokens": List(Value("string")), "raw": Value("string"), "imgid": Value("int64"),
            "sentid": Value("int64")}
    feats = Features({"image": Image(), "filepath": Value("string"), "sentids": List(Value("int64")),
                      "filename": Value("string"), "imgid": Value("int64"), "split": Value("string"),
                      "sentences": sent, "cocoid": Value("int64")})
    rows = []
    for cocoid, img, caps in [(11, _img(8, 6), ["A cat. ", "A small cat."]), (22, _img(5, 5, (0, 0, 255)), ["A dog."])]:
        for j, c in enumerate(caps):
            rows.append({"image": img, "filepath": "x.jpg", "sentids": [j], "filename": "x.jpg", "imgid": cocoid,
                         "split": "test", "sentences": {"tokens": c.split(), "raw": c, "imgid": cocoid, "sentid": j},
                         "cocoid": cocoid})
    ds = hub.map_coco_captions(Dataset.from_list(rows, features=feats))
    assert ds.column_names == COURSE_COLUMNS and len(ds) == 2
    assert ds[0]["captions"] == ["A cat.", "A small cat."] and ds[0]["caption"] == "A cat."
    assert ds[0]["id"] == "11" and ds[0]["image"].size == (8, 6)
    assert ds[1]["captions"] == ["A dog."] and ds[1]["image"].getpixel((0, 0)) == (0, 0, 255)
    ex = make_example(ds[0], "caption", random.Random(0))
    assert ex == {"prefix": "caption en", "suffix": "A cat.", "task": "caption"}


def test_vqav2_keeps_all_answers():
    ans = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
    feats = Features({"question_type": Value("string"), "multiple_choice_answer": Value("string"),
                      "answers": List(ans), "image_id": Value("int64"), "answer_type": Value("string"),
                      "question_id": Value("int64"), "question": Value("string"), "image": Image()})
    answers = ["2"] * 7 + ["3"] * 3
    row = {"question_type": "how many", "multiple_choice_answer": "2",
           "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
           "image_id": 9, "answer_type": "number", "question_id": 9001, "question": "How many dogs?",
           "image": _img(4, 4)}
    ds = hub.map_vqav2(Dataset.from_list([row], features=feats))
    qa = ds[0]["qa"]
    assert qa == [{"question": "How many dogs?", "answer": "2", "kind": "number", "answers": answers}]
    assert ds[0]["id"] == "9001" and ds[0]["objects"] == [] and ds[0]["source"] == "lmms-lab/VQAv2"
    assert make_example(ds[0], "vqa", random.Random(0))["prefix"] == "answer en How many dogs?"


def test_textvqa_majority_answer():
    feats = Features({"image_id": Value("string"), "question_id": Value("int32"), "question": Value("string"),
                      "question_tokens": List(Value("string")), "image": Image(), "image_width": Value("int32"),
                      "image_height": Value("int32"), "flickr_original_url": Value("string"),
                      "flickr_300k_url": Value("string"), "answers": List(Value("string")),
                      "image_classes": List(Value("string")), "set_name": Value("string"),
                      "ocr_tokens": List(Value("string"))})
    row = {"image_id": "abc", "question_id": 5, "question": "what brand?", "question_tokens": ["what", "brand"],
           "image": _img(6, 3), "image_width": 6, "image_height": 3, "flickr_original_url": "",
           "flickr_300k_url": "", "answers": ["nokia"] * 6 + ["noka"] * 4, "image_classes": ["phone"],
           "set_name": "val", "ocr_tokens": ["nokia"]}
    ds = hub.map_textvqa(Dataset.from_list([row], features=feats))
    assert ds[0]["qa"][0]["answer"] == "nokia" and len(ds[0]["qa"][0]["answers"]) == 10
    assert ds[0]["qa"][0]["kind"] == "text"


def test_refcoco_boxes_are_normalised_yxyx():
    feats = Features({"question_id": Value("string"), "image": Image(), "question": Value("string"),
                      "answer": List(Value("string")), "segmentation": List(Value("float32")),
                      "bbox": List(Value("float32")), "iscrowd": Value("int8"), "file_name": Value("string")})
    row = {"question_id": "r1", "image": _img(200, 100), "question": "Please describe the region.",
           "answer": ["man on left", "guy in red"], "segmentation": [0.0] * 6,
           "bbox": [20.0, 10.0, 50.0, 80.0], "iscrowd": 0, "file_name": "COCO_train2014_1.jpg"}
    ds = hub.map_refcoco(Dataset.from_list([row], features=feats))
    obj = ds[0]["objects"][0]
    assert obj["label"] == "man on left" and ds[0]["captions"] == ["man on left", "guy in red"]
    assert obj["box"] == pytest.approx([0.1, 0.1, 0.9, 0.35])  # y0=10/100, x0=20/200, y1=90/100, x1=70/200
    ex = make_example(ds[0], "refer", random.Random(0))
    assert ex["prefix"] == "detect man on left"
    res = parse_detection(ex["suffix"])
    assert res.ok and res.labels == ["man on left"]
    assert res.boxes[0] == pytest.approx((0.1, 0.1, 0.9, 0.35), abs=1e-3)


def test_errors_and_registry():
    with pytest.raises(ValueError, match="missing column"):
        hub.map_refcoco(Dataset.from_dict({"image": [_img(2, 2)]}, features=Features({"image": Image()})))
    with pytest.raises(ValueError, match="coco_captions, vqav2, textvqa, refcoco"):
        hub.load_hub("imagenet")
    assert hub.xywh_to_yxyx([0, 0, 300, 300], 100, 100) == [0.0, 0.0, 1.0, 1.0]  # clipped


def test_refcoco_single_string_expression_is_not_split_into_letters():
    feats = Features({"image": Image(), "bbox": List(Value("float32")), "answer": Value("string")})
    ds = Dataset.from_list([{"image": _img(200, 100), "bbox": [20, 10, 50, 80], "answer": " man on left "}],
                           features=feats)
    out = hub.map_refcoco(ds)[0]
    assert out["captions"] == ["man on left"] and out["objects"][0]["label"] == "man on left"


def test_answers_given_as_plain_strings_or_missing():
    rows = [{"image": _img(4, 4), "question": "what?", "answers": ["a", "b", "a"]},
            {"image": _img(4, 4), "question": "and?", "answers": None}]
    qa = [r["qa"][0] for r in hub.map_vqav2(Dataset.from_list(rows))]
    assert qa[0]["answer"] == "a" and qa[0]["answers"] == ["a", "b", "a"]
    assert qa[1]["answer"] == "" and qa[1]["answers"] == []


def test_bad_inputs_get_errors_that_say_what_to_do(monkeypatch):
    from datasets import DatasetDict

    one = Dataset.from_list([{"image": _img(4, 4), "question": "q?"}])
    with pytest.raises(TypeError, match=r"DatasetDict.*pass one split, e.g. ds\['validation'\]"):
        hub.map_vqav2(DatasetDict({"validation": one}))
    with pytest.raises(TypeError, match="Expected a datasets.Dataset"):
        hub.map_textvqa([{"image": _img(4, 4), "question": "q?"}])
    with pytest.raises(ValueError, match=r"4 numbers \[x, y, width, height\]"):
        hub.xywh_to_yxyx([1, 2, 3], 10, 10)
    with pytest.raises(ValueError, match="Image size must be positive"):
        hub.xywh_to_yxyx([1, 2, 3, 4], 0, 10)
    feats = Features({"image": Image(), "bbox": List(Value("float32")), "answer": List(Value("string"))})
    short = Dataset.from_list([{"image": _img(8, 8), "bbox": [1, 2, 3], "answer": ["x"]}], features=feats)
    with pytest.raises(ValueError, match="4 numbers"):
        hub.map_refcoco(short)

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'lmms-lab/VQAv2' on the Hub (LocalEntryNotFoundError)")

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    for bad in (0, -5, 2.5, True):  # 0 used to mean "everything": the whole split was downloaded
        with pytest.raises(ValueError, match="num_examples must be a positive int or None"):
            hub.load_hub("vqav2", num_examples=bad)
    with pytest.raises(ValueError, match="already slices"):
        hub.load_hub("vqav2", split="validation[:10]", num_examples=5)
    with pytest.raises(ConnectionError, match="needs internet.*HF_DATASETS_OFFLINE=1"):
        hub.load_hub("vqav2", num_examples=5)
