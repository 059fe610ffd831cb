"""Streamed ShapesWorld (``pali3_edu.data.streaming``): batches that depend only on (seed, step),
whatever the number of DataLoader workers; a resumed run sees the batches of an uninterrupted one;
only training scenes; clear errors; and the GPU presets' ``build_data`` streams."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from pali3_edu.data.multimodal import DEFAULT_TASK_WEIGHTS
from pali3_edu.data.shapesworld import (
    HELDOUT_COMBOS,
    SPLIT_SEEDS,
    ShapesWorldConfig,
    generate_scene,
    render,
    scene_record,
    split_seeds,
)
from pali3_edu.data.streaming import (
    WORKERS_ENV_VAR,
    ShapesWorldStream,
    StreamLoader,
    default_num_workers,
    images_to_uint8_fast,
)
from pali3_edu.data.tasks import TASKS
from pali3_edu.recipes.siglip import images_to_uint8
from pali3_edu.tokenizer import course_tokenizer
from pali3_edu.tokens import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer()


def make(tok, **kw):
    kw = {"batch_size": 4, "max_prompt_len": 24, "max_answer_len": 24, "image_size": 32, "num_scenes": 300,
          "check_scenes": 16, **kw}
    return ShapesWorldStream(tok, kw.pop("task_weights", DEFAULT_TASK_WEIGHTS), **kw)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# the batches
# ---------------------------------------------------------------------------------------------


def test_batch_is_a_pure_function_of_seed_and_step(tok):
    stream = make(tok)
    batch = stream.batch(3)
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].shape[0] == 4 and batch["task"].shape == (4,)
    assert same(batch, make(tok).batch(3))  # a new stream, the same batch
    assert not same(batch, stream.batch(4))
    assert not same(batch, make(tok, seed=1).batch(3))
    assert len(set(stream.seeds_of(3))) == 4  # different scenes in one batch


def test_examples_are_the_texts_of_the_batch(tok):
    stream = make(tok, batch_size=6)
    batch, examples = stream.batch(2), stream.examples(2)
    assert [ex["task"] for ex in examples] == [TASKS[t] for t in batch["task"].tolist()]
    for row, ex in enumerate(examples):
        prompt = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        answer = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert tok.decode(prompt[:-1]) == ex["prefix"] and tok.decode(answer[:-1]) == ex["suffix"]
    # each row's pixels are the rendered scene of the seed its example names
    for row, ex in enumerate(examples):
        scene = generate_scene(ex["seed"], ShapesWorldConfig(), "train")
        pixels = images_to_uint8([render(scene, 32)], 32)[0].float() / 127.5 - 1
        assert torch.equal(batch["pixel_values"][row], pixels)


def test_fast_uint8_path_equals_the_float_path():
    scenes = [generate_scene(s, ShapesWorldConfig(image_size=224)) for s in split_seeds("train", 3)]
    rendered = [render(s, 224) for s in scenes]
    assert torch.equal(images_to_uint8_fast(rendered, 224), images_to_uint8(rendered, 224))
    # another size goes through images_to_uint8's resize
    assert torch.equal(images_to_uint8_fast(rendered, 48), images_to_uint8(rendered, 48))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_same_batches_whatever_the_number_of_workers(tok, workers):
    stream = make(tok, image_size=24)  # 24 px: drawn at 32 and resized (inside the workers too)
    expected = [stream.batch(step) for step in range(5)]
    with StreamLoader(stream, workers, prefetch_factor=2) as loader:
        got = [loader.get_batch(step) for step in range(5)]
        assert loader.restarts == 1 and loader.discarded == 0  # every step made once, by one worker
    assert all(same(g, e) for g, e in zip(got, expected))


def test_workers_share_the_steps_and_the_loader_gets_them_in_order(tok):
    from torch.utils.data import DataLoader

    stream = make(tok).starting_at(3)
    loader = DataLoader(stream, batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(0))
    steps = []
    for step, _ in loader:
        steps.append(step)
        if len(steps) == 6:
            break
    assert steps == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_step_k_sees_the_uninterrupted_batches(tok, workers):
    stream = make(tok)
    with StreamLoader(stream, workers) as loader:
        uninterrupted = [loader.get_batch(step) for step in range(7)]
    with StreamLoader(make(tok), workers) as resumed:  # a new process would build a new loader
        assert all(same(resumed.get_batch(step), uninterrupted[step]) for step in range(4, 7))
        assert resumed.restarts == 1
        assert same(resumed.get_batch(1), uninterrupted[1]) and resumed.restarts == 2  # jumping back restarts
        assert same(resumed.get_batch(2), uninterrupted[2]) and resumed.restarts == 2


def test_the_loader_leaves_the_global_random_state_alone(tok):
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    for workers in (0, 1):
        with StreamLoader(make(tok), workers) as loader:
            loader.get_batch(0)
            loader.get_batch(5)  # a restart
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


class _PixelModel(nn.Module):
    """Predicts each row's task index from its mean colour, with dropout (so random state matters)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, batch):
        pred = self.net(batch["pixel_values"].mean((2, 3)))[:, 0]
        return ((pred - batch["task"].float()) ** 2).mean()


def test_a_resumed_training_run_ends_with_the_uninterrupted_weights(tok, tmp_path):
    from pali3_edu.train import TrainConfig, train

    cfg = TrainConfig(steps=6, lr=0.05, warmup_steps=1, grad_accum=2, checkpoint_every=None, log_every=1)

    def run(folder, stop_after=None, workers=0):
        torch.manual_seed(0)
        model = _PixelModel()
        with StreamLoader(make(tok), workers) as loader:
            train(model, lambda m, b: m(b), loader.get_batch, cfg, checkpoint=folder, device="cpu",
                  progress=False, stop_after=stop_after)
        return model

    whole = run(tmp_path / "whole")
    run(tmp_path / "resumed", stop_after=3)
    resumed = run(tmp_path / "resumed", workers=2)  # resumes at step 3 (micro-batch 6), other workers
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_scenes", [300, None])
def test_only_training_scenes_are_streamed(tok, num_scenes):
    stream = make(tok, batch_size=16, num_scenes=num_scenes)
    seeds = [s for step in range(20) for s in stream.seeds_of(step)]
    train_seeds = split_seeds("train", num_scenes or 10**8)
    assert all(s in train_seeds for s in seeds) and max(seeds) < SPLIT_SEEDS["val"]
    held_out = [split_seeds(split, 10**8) for split in ("val", "test", "compositional")]  # ranges: `in` is O(1)
    assert not any(s in r for r in held_out for s in seeds)
    records = [scene_record(scene, with_image=False) for step in range(20) for scene in stream.draw(step)]
    assert all((o["color"], o["shape"]) not in HELDOUT_COMBOS for r in records for o in r["objects"])
    val = [scene_record(generate_scene(s, ShapesWorldConfig(), "val"), with_image=False)
           for s in split_seeds("val", 300)]
    val_scenes = {repr((r["objects"], r["word"])) for r in val}
    assert not val_scenes.intersection(repr((r["objects"], r["word"])) for r in records)


def test_held_out_splits_cannot_be_streamed(tok):
    for split in ("val", "test", "compositional"):
        with pytest.raises(ValueError, match=rf"training scenes only.*load_shapesworld\('{split}'"):
            make(tok, split=split)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, error, message", [
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"batch_size": 2.0}, ValueError, "batch_size must be an int"),
    ({"batch_size": 8, "num_scenes": 5}, ValueError, "larger than num_scenes=5"),
    ({"num_scenes": 0}, ValueError, "num_scenes must be an int in 1..100000000"),
    ({"num_scenes": 10**8 + 1}, ValueError, "num_scenes must be an int in 1..100000000"),
    ({"image_size": 500}, ValueError, "image_size must be an int in 1..448"),
    ({"image_size": 64, "max_objects": 9}, ValueError, "no scene has more than 8"),
    ({"task_weights": {"captions": 1.0}}, ValueError, "Unknown task"),
    ({"task_weights": {"caption": 0.0}}, ValueError, "Every task weight is 0"),
    ({"max_answer_len": 1}, ValueError, "max_answer_len must be an int >= 2"),
    ({"max_answer_len": 5}, ValueError, "Raise max_answer_len to at least"),
    ({"caption": "first"}, ValueError, "caption must be 'canonical' or 'random'"),
    ({"seed": 1.5}, ValueError, "seed must be an int"),
    ({"record_fn": "quantize"}, TypeError, "record_fn must be a function"),
    ({"check_scenes": -1}, ValueError, "check_scenes must be an int >= 0"),
])
def test_bad_arguments_get_clear_errors(tok, kw, error, message):
    with pytest.raises(error, match=message):
        make(tok, **kw)


def test_errors_while_streaming(tok):
    ocr_without_words = make(tok, task_weights={"ocr": 1.0}, word_prob=0.0)  # nothing to check: no word anywhere
    with pytest.raises(ValueError, match=r"only 0 of 4 scenes support one of the tasks \['ocr'\].*word_prob > 0"):
        ocr_without_words.batch(0)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        make(tok).batch(-1)
    drops_records = make(tok, check_scenes=0, record_fn=lambda records: records[1:])
    with pytest.raises(ValueError, match="record_fn returned 3 records for 4 scenes"):
        drops_records.batch(0)
    with StreamLoader(make(tok), 2) as loader:  # an error in a worker reaches the caller
        loader.stream.record_fn = lambda records: records[1:]
        with pytest.raises(ValueError, match="record_fn returned 3 records"):
            loader.get_batch(0)


def test_loader_arguments(tok, monkeypatch):
    stream = make(tok)
    with pytest.raises(TypeError, match="stream must be a StepStream"):
        StreamLoader([stream.batch(0)])
    with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
        StreamLoader(stream, -1)
    with pytest.raises(ValueError, match="prefetch_factor must be an int >= 1"):
        StreamLoader(stream, 1, prefetch_factor=0)
    with pytest.raises(ValueError, match="multiprocessing_context must be one of"):
        StreamLoader(stream, 1, multiprocessing_context="threads")
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        StreamLoader(stream, 0).get_batch(-2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
            StreamLoader(stream, 0, pin_memory=True)
        assert StreamLoader(stream, 0).pin_memory is False
    monkeypatch.setenv(WORKERS_ENV_VAR, "3")
    assert default_num_workers() == 3 and StreamLoader(stream).num_workers == 3
    monkeypatch.setenv(WORKERS_ENV_VAR, "many")
    with pytest.raises(ValueError, match=f"{WORKERS_ENV_VAR}='many'"):
        default_num_workers()
    monkeypatch.delenv(WORKERS_ENV_VAR)
    if not torch.cuda.is_available():
        assert default_num_workers() == 0  # batches made between the steps: the CPU trains
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")  # torchrun: the cores shared among the processes
        assert default_num_workers() == 1


# ---------------------------------------------------------------------------------------------
# the recipes: GPU presets stream, the CPU presets keep their cached data
# ---------------------------------------------------------------------------------------------


def test_gpu_presets_stream_and_cpu_presets_do_not(tok):
    from pali3_edu.recipes import get_recipe
    from pali3_edu.recipes.pali3 import PaLI3Data, build_data, quantize_box
    from pali3_edu.recipes.scale import StreamedPaLI3Data

    for stage in ("pali3-stage1", "pali3-stage2", "pali3-transfer"):
        for preset in ("tiny-cpu", "micro", "smoke"):
            assert type(get_recipe(stage, preset).data) is PaLI3Data
        for preset in ("colab-t4", "l4-a100", "h100"):
            data = get_recipe(stage, preset).data
            assert isinstance(data, StreamedPaLI3Data) and data.stream.source == "shapesworld"
            assert data.mix.num_scenes == 1_000_000

    recipe = get_recipe("pali3-transfer", "h100", **{"data.mix.batch_size": 3})
    loader = build_data(recipe, tok)
    assert isinstance(loader, StreamLoader) and isinstance(loader.stream, ShapesWorldStream)
    batch = loader.get_batch(0)
    assert batch["pixel_values"].shape == (3, 3, 448, 448) and set(batch["task"].tolist()) == {TASKS.index("refer")}
    # the boxes are quantised to the recipe's loc_levels, as in the cached data
    from pali3_edu.data.tasks import parse_detection

    scenes = loader.stream.draw(0)
    for ex in loader.examples(0):
        obj = next(o for s in scenes if s.seed == ex["seed"] for o in s.objects if ex["suffix"].endswith(o.name))
        box = parse_detection(ex["suffix"]).boxes[0]
        assert box == pytest.approx(quantize_box(list(obj.box), recipe.data.mix.loc_levels), abs=1 / 1023)
    loader.close()

    with pytest.raises(ValueError, match="data.stream.source='imagenet'"):
        build_data(get_recipe("pali3-transfer", "h100", **{"data.stream.source": "imagenet"}), tok)


def test_streams_survive_pickling(tok):
    """Workers started with spawn/forkserver (macOS, Windows, Python 3.14's Linux default) get a
    pickled copy of the stream; the recipes' record_fn is a functools.partial for that reason."""
    import pickle

    from pali3_edu.recipes import get_recipe
    from pali3_edu.recipes.scale import build_streamed_data

    stream = build_streamed_data(get_recipe("pali3-stage1", "h100", **{"data.mix.batch_size": 2}), tok,
                                 num_workers=0).stream
    copy = pickle.loads(pickle.dumps(stream.starting_at(5)))
    assert copy.start_step == 5 and same(copy.batch(1), stream.batch(1))


def test_a_streamed_recipe_trains_and_resumes_through_load_or_train(tmp_path, monkeypatch):
    """The micro stage-1 recipe with streamed data (as the GPU presets have it), through the recipe
    cache: interrupted after 3 steps and resumed with 2 workers, it ends with the weights of an
    uninterrupted run."""
    import dataclasses

    from pali3_edu.recipes import get_recipe, load_or_train
    from pali3_edu.recipes.scale import StreamedPaLI3Data

    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = get_recipe("pali3-stage1", "micro")
        mix = dataclasses.replace(recipe.data.mix, num_scenes=10_000)
        recipe = dataclasses.replace(recipe, data=StreamedPaLI3Data(mix, recipe.data.stage))
        monkeypatch.setenv(WORKERS_ENV_VAR, "0")
        whole = load_or_train(recipe, cache_name="whole", progress=False, device="cpu")
        load_or_train(recipe, cache_name="resumed", progress=False, device="cpu", stop_after=3)
        monkeypatch.setenv(WORKERS_ENV_VAR, "2")
        resumed = load_or_train(recipe, cache_name="resumed", progress=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert not resumed.loaded and resumed.history.resumed_from == 3
    assert all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))
