"""ShapesWorld: determinism, geometry, splits, QA correctness, caching, errors."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re

import numpy as np
import pytest

from pali3_edu import cache
from pali3_edu.data import shapesworld as sw
from pali3_edu.data.shapesworld import (
    COLORS,
    HELDOUT_COMBOS,
    RGB,
    SHAPES,
    ShapesWorldConfig,
    generate_scene,
    load_shapesworld,
    render,
    render_masks,
    scene_record,
    text_corpus,
)

CROWDED = ShapesWorldConfig(image_size=64, min_objects=4, max_objects=8, word_prob=0.5)


def _records(split: str, n: int, cfg: ShapesWorldConfig | None = None) -> list[dict]:
    return [scene_record(generate_scene(s, cfg, split), with_image=False) for s in sw.split_seeds(split, n)]


def test_vocabulary_sizes():
    assert len(SHAPES) >= 6 and len(COLORS) >= 6 and sw.SIZES == ("small", "large")
    assert all(" " not in w for w in SHAPES + COLORS)


def test_same_seed_same_scene_and_pixels():
    cfg = ShapesWorldConfig(word_prob=0.5, max_objects=4)
    for seed in (0, 1, 12345):
        a, b = generate_scene(seed, cfg), generate_scene(seed, cfg)
        assert a == b
        assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
        assert scene_record(a, with_image=False) == scene_record(b, with_image=False)
    assert generate_scene(0, cfg) != generate_scene(1, cfg)


def test_layout_does_not_depend_on_resolution():
    small = generate_scene(5, ShapesWorldConfig(image_size=32))
    large = generate_scene(5, ShapesWorldConfig(image_size=256))
    assert small.objects == large.objects and small.captions == large.captions
    assert render(small).size == (32, 32) and render(small, 448).size == (448, 448)


@pytest.mark.parametrize("size", [64, 160])
def test_boxes_inside_image_match_masks_and_never_overlap(size):
    cfg = ShapesWorldConfig(image_size=size, min_objects=4, max_objects=8, word_prob=0.5)
    for seed in range(40):
        scene = generate_scene(seed, cfg)
        masks = render_masks(scene)
        assert masks.shape == (len(scene.objects), size, size)
        # masks of different objects never share a pixel
        assert masks.sum(0).max() <= 1
        for obj, mask in zip(scene.objects, masks):
            y0, x0, y1, x1 = obj.box
            assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
            ys, xs = np.nonzero(mask)
            assert len(ys) > 0
            # pixel i covers [i/S, (i+1)/S): the mask spans the pixels the box touches (within 1 px)
            assert abs(ys.min() - y0 * size) <= 1.0 and abs(ys.max() + 1 - y1 * size) <= 1.0
            assert abs(xs.min() - x0 * size) <= 1.0 and abs(xs.max() + 1 - x1 * size) <= 1.0
        # the boxes themselves are disjoint, word included
        boxes = [o.box for o in scene.objects] + ([scene.word_box] if scene.word else [])
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_rendered_colours_and_word_position():
    cfg = ShapesWorldConfig(image_size=128, word_prob=1.0, max_objects=2)
    for seed in range(10):
        scene = generate_scene(seed, cfg)
        img = np.asarray(render(scene)).astype(int)
        masks = render_masks(scene)
        for obj, mask in zip(scene.objects, masks):
            assert (img[mask] == RGB[obj.color]).all()
        if scene.word:
            bright = (img.min(axis=2) > 200) & ~masks.any(0)  # white text pixels
            ys, xs = np.nonzero(bright)
            y0, x0, y1, x1 = (v * 128 for v in scene.word_box)
            assert len(ys) > 0
            assert ys.min() >= y0 - 2 and ys.max() <= y1 + 2 and xs.min() >= x0 - 2 and xs.max() <= x1 + 2


def test_compositional_split_holds_out_its_combos():
    seen = set()
    for split in ("train", "val", "test"):
        for rec in _records(split, 300, CROWDED):
            combos = {(o["color"], o["shape"]) for o in rec["objects"]}
            assert not combos & HELDOUT_COMBOS, (split, rec["seed"], combos)
            seen |= combos
    # train/val/test still show every colour and every shape
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)
    comp = _records("compositional", 300, CROWDED)
    assert all({(o["color"], o["shape"]) for o in r["objects"]} & HELDOUT_COMBOS for r in comp)
    # not even the texts of train mention a held-out pair
    heldout_names = {f"{c} {s}" for c, s in HELDOUT_COMBOS}
    train_text = " ".join(text_corpus(300, "train"))
    assert not any(name in train_text for name in heldout_names)


def test_splits_are_disjoint():
    seeds = {s: set(sw.split_seeds(s, 1000)) for s in sw.SPLITS}
    for a in sw.SPLITS:
        for b in sw.SPLITS:
            if a < b:
                assert not seeds[a] & seeds[b]
    digests = {}
    for split in ("train", "val", "test"):
        digests[split] = {hashlib.md5(render(generate_scene(s, None, split)).tobytes()).hexdigest()
                          for s in sw.split_seeds(split, 60)}
    assert not digests["train"] & digests["val"] and not digests["train"] & digests["test"]


def _object_name(o: dict) -> str:
    return f"{o['color']} {o['shape']}"


def _check_answer(q: str, a: str, kind: str, rec: dict) -> None:
    """Recompute the answer from the objects alone, independently of the generator's QA code."""
    objs = rec["objects"]
    cy = lambda o: (o["box"][0] + o["box"][2]) / 2  # noqa: E731  (all shapes are symmetric in x)
    cx = lambda o: (o["box"][1] + o["box"][3]) / 2  # noqa: E731

    def the(name):  # exactly one object answers to "the <name>"
        found = [o for o in objs if name in (o["shape"], _object_name(o))]
        assert len(found) == 1, f"ambiguous question {q!r}"
        return found[0]

    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        assert a == the(m[1])["color"]
    elif m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        found = [o for o in objs if o["color"] == m[1]]
        assert len(found) == 1 and a == found[0]["shape"]
    elif m := re.fullmatch(r"what size is the (\w+ \w+)\?", q):
        assert a == the(m[1])["size"]
    elif q == "how many shapes are there?":
        assert a == str(len(objs))
    elif m := re.fullmatch(r"how many (\w+) are there\?", q):
        shape = {"crosses": "cross"}.get(m[1], m[1][:-1])  # plural -> singular
        assert shape in SHAPES
        assert a == str(sum(o["shape"] == shape for o in objs))
    elif m := re.fullmatch(r"is there a (\w+ \w+)\?", q):
        assert a == ("yes" if any(_object_name(o) == m[1] for o in objs) else "no")
    elif m := re.fullmatch(r"is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)\?", q):
        x, rel, y = the(m[1]), m[2], the(m[3])
        truth = {"left of": cx(x) < cx(y), "right of": cx(x) > cx(y),
                 "above": cy(x) < cy(y), "below": cy(x) > cy(y)}[rel]
        assert a == ("yes" if truth else "no")
        d = abs(cx(x) - cx(y)) if rel in ("left of", "right of") else abs(cy(x) - cy(y))
        assert d >= 0.09  # only clear-cut relations are asked
    elif q == "what word is written?":
        assert a == rec["word"] != ""
    elif q == "is there a word in the image?":
        assert a == ("yes" if rec["word"] else "no")
    else:
        raise AssertionError(f"unexpected question {q!r} ({kind})")


def test_every_qa_answer_is_correct():
    kinds = set()
    answers = {}
    for rec in _records("train", 300, ShapesWorldConfig(max_objects=5, word_prob=0.5)):
        for qa in rec["qa"]:
            _check_answer(qa["question"], qa["answer"], qa["kind"], rec)
            kinds.add(qa["kind"])
            answers.setdefault(qa["kind"], set()).add(qa["answer"])
    assert kinds == {"color", "shape", "size", "count", "exists", "relation", "text"}
    assert answers["relation"] == {"yes", "no"} and answers["exists"] == {"yes", "no"}


def test_captions_and_description_mention_every_object():
    for rec in _records("train", 100, ShapesWorldConfig(max_objects=4, word_prob=0.5)):
        assert rec["caption"] == rec["captions"][0] and len(rec["captions"]) >= 3
        assert len(set(rec["captions"])) == len(rec["captions"])
        phrases = [f"a {o['size']} {o['color']} {o['shape']}" for o in rec["objects"]]
        for text in rec["captions"]:
            assert all(p in text for p in phrases), (text, phrases)
        if rec["word"]:
            assert rec["word"] in rec["caption"] and rec["word"] in rec["description"]
        assert rec["description"].count(".") >= 3
        if len(rec["objects"]) == 2:
            assert re.fullmatch(r"a \w+ \w+ \w+ (left of|right of|above|below) a \w+ \w+ \w+( and the word \w+)?",
                                rec["caption"])


def test_text_corpus_is_deterministic_and_varied():
    texts = text_corpus(50, "train")
    assert texts == text_corpus(50, "train")
    assert texts != text_corpus(50, "train", seed_offset=50)
    descriptions = [generate_scene(s).description for s in sw.split_seeds("train", 50)]
    openings = {d.split(".")[0].split()[0] for d in descriptions}
    assert len(openings) >= 3  # several phrasings, not a single template


def test_cache_reload_is_identical_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    fresh = load_shapesworld("val", 12, word_prob=0.5, cache=False)
    first = load_shapesworld("val", 12, word_prob=0.5)
    folders = sorted(p.name for p in (tmp_path / "shapesworld").iterdir() if p.is_dir())
    assert len(folders) == 1 and sw.GENERATOR_VERSION in folders[0]
    again = load_shapesworld("val", 12, word_prob=0.5)
    assert len(again) == 12
    for a, b, c in zip(fresh, first, again):
        assert np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))
        assert np.array_equal(np.asarray(b["image"]), np.asarray(c["image"]))
        assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in c.items() if k != "image"}
    # another parameter or another generator version -> another cache folder
    load_shapesworld("val", 12, word_prob=0.4)
    monkeypatch.setattr(sw, "GENERATOR_VERSION", "test-bump")
    load_shapesworld("val", 12, word_prob=0.5)
    assert len([p for p in (tmp_path / "shapesworld").iterdir() if p.is_dir()]) == 3
    assert sw.clear_cache() == 3 and not list((tmp_path / "shapesworld").iterdir())


def test_dataset_columns_and_types():
    ds = load_shapesworld("train", 6, image_size=48, word_prob=1.0, cache=False)
    assert ds.column_names == ["image", "seed", "objects", "word", "word_box", "caption", "captions",
                               "qa", "description"]
    rec = ds[0]
    assert rec["image"].size == (48, 48) and rec["image"].mode == "RGB"
    assert rec["seed"] == sw.SPLIT_SEEDS["train"]
    assert set(rec["objects"][0]) == {"shape", "color", "size", "box"}
    assert rec["word"] and len(rec["word_box"]) == 4 and all(0 <= v <= 1 for v in rec["word_box"])
    no_word = load_shapesworld("train", 3, word_prob=0.0, cache=False)
    assert all(r["word"] == "" and r["word_box"] == [-1.0] * 4 for r in no_word)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="too small for 8 objects"):
        ShapesWorldConfig(image_size=32, max_objects=8)
    with pytest.raises(ValueError, match="too small"):
        load_shapesworld("train", 4, image_size=32, max_objects=8, cache=False)
    for bad in (16, 31, 449, 1024):
        with pytest.raises(ValueError, match="32..448"):
            ShapesWorldConfig(image_size=bad)
    with pytest.raises(ValueError, match="32..448"):
        render(generate_scene(0), 8)
    with pytest.raises(ValueError, match="Unknown split 'valid'.*train, val, test, compositional"):
        load_shapesworld("valid", 4, cache=False)
    with pytest.raises(ValueError, match="Unknown split"):
        generate_scene(0, split="dev")
    with pytest.raises(ValueError, match="min_objects"):
        ShapesWorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="word_prob"):
        ShapesWorldConfig(word_prob=1.5)
    with pytest.raises(ValueError, match="num_scenes"):
        load_shapesworld("train", 0, cache=False)
    # the capacity limit grows with the image: 8 objects fit at 64 px
    assert len(generate_scene(3, ShapesWorldConfig(image_size=64, min_objects=8, max_objects=8)).objects) == 8


def test_viz_smoke():
    import matplotlib

    matplotlib.use("Agg")
    from pali3_edu.viz.data import draw_boxes, scene_browser, show_scenes

    ds = load_shapesworld("train", 4, word_prob=1.0, cache=False)
    fig = show_scenes(ds, n=4, boxes=True)
    assert len(fig.axes) == 4
    out = draw_boxes(ds[0]["image"], [o["box"] for o in ds[0]["objects"]], ["x"] * len(ds[0]["objects"]))
    assert out.size == (256, 256) and out.getpixel((0, 0)) != (255, 255, 255)
    assert scene_browser(ds) is not None


# --------------------------------------------------------------------------------------------
# The on-disk cache: verified on load, rebuilt when damaged, safe with several processes
# --------------------------------------------------------------------------------------------


def _digest(ds) -> str:
    """One hash over every pixel and every other field of a data set."""
    h = hashlib.sha256()
    for row in ds:
        h.update(np.asarray(row["image"]).tobytes())
        h.update(repr({k: v for k, v in row.items() if k != "image"}).encode())
    return h.hexdigest()


def _only_cache_folder(tmp_path):
    folders = [p for p in (tmp_path / "shapesworld").iterdir() if p.is_dir()]
    assert len(folders) == 1
    return folders[0]


@pytest.mark.parametrize("damage", ["truncate", "flip64"])
def test_damaged_cache_file_is_rebuilt_with_a_message(tmp_path, monkeypatch, capsys, damage):
    """A truncated .arrow gave a raw pyarrow error on every load; 64 flipped bytes loaded fine and
    then crashed (or silently changed images) while iterating. Both must be found before reading."""
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    want = _digest(load_shapesworld("val", 40, word_prob=0.5, cache=False))
    load_shapesworld("val", 40, word_prob=0.5)
    (arrow,) = _only_cache_folder(tmp_path).glob("*.arrow")
    data = bytearray(arrow.read_bytes())
    if damage == "truncate":
        arrow.write_bytes(bytes(data[: len(data) // 2]))
    else:
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xA5 for b in data[mid:mid + 64])
        arrow.write_bytes(bytes(data))
    capsys.readouterr()
    ds = load_shapesworld("val", 40, word_prob=0.5)
    err = capsys.readouterr().err
    assert "ShapesWorld" in err and "damaged" in err and arrow.name in err and "rebuilding" in err
    assert _digest(ds) == want
    capsys.readouterr()
    assert _digest(load_shapesworld("val", 40, word_prob=0.5)) == want  # now intact: no message
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("leftover", ["no_manifest", "empty_folder"])
def test_old_or_half_written_cache_folder_is_rebuilt(tmp_path, monkeypatch, capsys, leftover):
    """Caches written before manifests existed, or an empty folder left by a crash."""
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    cfg = ShapesWorldConfig()
    folder = tmp_path / "shapesworld" / f"{cfg.key()}-test-n5"
    if leftover == "no_manifest":
        sw.build_dataset("train", 5, cfg).save_to_disk(str(folder))  # right key, wrong scenes
    else:
        folder.mkdir(parents=True)
    ds = load_shapesworld("test", 5)
    assert "manifest.json is missing" in capsys.readouterr().err
    assert _digest(ds) == _digest(load_shapesworld("test", 5, cache=False))


def _concurrent_load_worker(data: str, out: str, barrier) -> None:
    """Child process: start together with the others, load the same data set, record what it got."""
    os.environ["PALI3_EDU_DATA"] = data
    build = sw.build_dataset

    def logged_build(*args, **kwargs):
        with open(os.path.join(data, "builds.log"), "a") as f:
            f.write(f"{os.getpid()}\n")
        return build(*args, **kwargs)

    sw.build_dataset = logged_build
    barrier.wait(timeout=120)
    ds = load_shapesworld("train", 60, word_prob=0.5)
    with open(out, "w") as f:
        f.write(_digest(ds))


def test_four_processes_loading_the_same_cache_at_once(tmp_path):
    """Used to race: one writer's rmtree deleted another's finished copy (FileNotFoundError)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    outs = [tmp_path / f"digest{i}.txt" for i in range(4)]
    procs = [ctx.Process(target=_concurrent_load_worker, args=(str(tmp_path), str(o), barrier)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    digests = {o.read_text() for o in outs}
    assert digests == {_digest(load_shapesworld("train", 60, word_prob=0.5, cache=False))}
    builds = (tmp_path / "builds.log").read_text().split()
    if cache.fcntl is not None:  # with an OS lock exactly one process builds, the others wait
        assert len(builds) == 1
    assert sorted(p.name for p in (tmp_path / "shapesworld").iterdir() if p.is_dir()) == [
        f"{ShapesWorldConfig(word_prob=0.5).key()}-train-n60"]  # no temporary copies left


def test_unwritable_data_folder_fails_before_generating(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("a regular file: nothing can be created below it")
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "afile" / "data"))
    monkeypatch.setattr(sw, "build_dataset", lambda *a, **k: pytest.fail("generated before checking"))
    with pytest.raises(PermissionError, match=r"afile/data.*PALI3_EDU_DATA to a folder you can write"):
        load_shapesworld("val", 4)


def test_fingerprint_changes_with_everything_that_changes_the_output(monkeypatch):
    base = sw.shapesworld_fingerprint()
    assert sw.GENERATOR_VERSION in base and base == sw.shapesworld_fingerprint()
    assert sw.shapesworld_fingerprint(rendering=False) == f"shapesworld-v{sw.GENERATOR_VERSION}"
    assert "pillow" in base and "font" in base  # the renderer decides the exact pixels
    assert sw.shapesworld_fingerprint(ShapesWorldConfig()) != sw.shapesworld_fingerprint(
        ShapesWorldConfig(word_prob=0.4))
    monkeypatch.setattr(sw, "GENERATOR_VERSION", "test-bump")
    assert sw.shapesworld_fingerprint() != base


def test_clear_cache_removes_locks_and_leftovers(tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    load_shapesworld("val", 3)
    root = tmp_path / "shapesworld"
    (root / f".{ShapesWorldConfig().key()}-val-n3{cache.TMP_MARKER}1-dead").mkdir()  # a killed build
    assert any(p.name.endswith(".lock") for p in root.iterdir())
    assert sw.clear_cache() == 1 and list(root.iterdir()) == []
