"""PaLI-3 training batches from a mixture of tasks, built on the fly.

PaLI-3 trains one model on many tasks at once; only the prompt tells them apart (see
:mod:`pali3_edu.data.tasks`). :class:`MultimodalData` holds the images of a data set (as uint8)
and its records, and ``get_batch(step)`` makes a batch of image + prompt + answer triples:

1. draw ``batch_size`` *different* scenes;
2. for each scene pick a task with probability proportional to ``task_weights``, among the tasks
   that scene supports (a scene without a written word never gets ``ocr``);
3. turn (scene, task) into a ``(prefix, suffix)`` pair with :func:`~pali3_edu.data.tasks.make_example`;
4. tokenize: prompts and answers padded to the longest in the batch (a batch mixes tasks, so
   lengths differ a lot: ``ocr`` is 2 tokens, a caption 20).

Every random choice comes from ``(seed, step)`` (and the row ``i`` inside the batch), so
``get_batch(step)`` is a pure function: a resumed run sees exactly the batches an uninterrupted
one would have seen, and ``examples(step)`` shows the texts of any batch without training.

**Too-long texts are an error, not truncated.** Cutting an answer would teach the model broken
outputs: a detection answer cut in the middle of its four ``<loc>`` tokens, a caption that stops
mid-sentence (and never learns to write EOS there). In ShapesWorld the lengths follow from the
data settings (more objects → longer detection answers), so a text that does not fit means the
limits do not match the data. The constructor therefore scans every example each record can give
and raises a ``ValueError`` naming the longest offender and the limit it needs, before training
starts rather than at step 3000.

    data = load_multimodal(tok, "train", 2000, image_size=64, task_weights=DEFAULT_TASK_WEIGHTS,
                           batch_size=64, max_prompt_len=24, max_answer_len=24)
    batch = data.get_batch(0)     # pixel_values, input_ids, attention_mask, labels, task
    data.examples(0)[:2]          # [{"scene": 17, "task": "vqa", "prefix": ..., "suffix": ...}, ...]
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pali3_edu.data.tasks import TASKS, make_example, possible_tasks
from pali3_edu.tokens import IGNORE_INDEX

DEFAULT_TASK_WEIGHTS: dict[str, float] = {
    "caption": 1.0,
    "vqa": 2.0,
    "ocr": 1.0,
    "detect": 1.0,
    "refer": 1.0,
}
"""The course's default mixture (relative weights; they need not sum to 1).

VQA gets twice the weight because it is many skills in one (colour, shape, size, counting,
existence, spatial relations, reading), each with a single-word answer that teaches little per
example. The other tasks get equal shares. A weight applies among the tasks a scene supports:
with the default ShapesWorld settings only ~30 % of scenes carry a word, so ``ocr`` ends up with
about 1/20 of the examples, not 1/6 (``MultimodalData.task_fractions()`` gives the exact mixture).
"""


def check_task_weights(task_weights: Mapping[str, float]) -> dict[str, float]:
    """Validate a task mixture: known task names, finite weights >= 0, at least one > 0."""
    if not isinstance(task_weights, Mapping) or not task_weights:
        raise ValueError(f"task_weights must be a non-empty dict task → weight, e.g. {DEFAULT_TASK_WEIGHTS}.")
    unknown = [t for t in task_weights if t not in TASKS]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown} in task_weights; the tasks are {', '.join(TASKS)}.")
    out = {}
    for t, w in task_weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"task_weights[{t!r}] = {w!r}: weights must be finite numbers >= 0.")
        out[t] = float(w)
    if not any(out.values()):
        raise ValueError("Every task weight is 0: give at least one task a positive weight.")
    return out


class _EveryChoice(random.Random):
    """A ``random.Random`` whose ``choice`` returns option ``k`` (the last one if there are fewer):
    calling ``make_example`` with k = 0, 1, 2, … walks through everything it can choose."""

    def __init__(self, k: int):
        super().__init__(k)
        self.k = k

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[min(self.k, len(seq) - 1)]


def all_examples(record: dict[str, Any], task: str, caption: str = "canonical") -> list[dict[str, str]]:
    """Every distinct example ``make_example(record, task, rng)`` can return (for length checks)."""
    seen: list[dict[str, str]] = []
    for k in range(1000):
        ex = make_example(record, task, _EveryChoice(k), caption=caption)
        if ex in seen:
            break
        seen.append(ex)
    return seen


class MultimodalData:
    """Images + records → mixed-task PaLI-3 batches (see the module docstring).

    Args:
        images_uint8: ``(N, 3, H, W)`` uint8, the images at the model's resolution
            (:func:`pali3_edu.recipes.siglip.images_to_uint8` makes them from PIL images).
        records: ``N`` data set rows without the image (``objects``, ``word``, ``caption``,
            ``captions``, ``qa`` …, as in ShapesWorld).
        tokenizer: the course tokenizer (``batch_encode``/``decode``).
        task_weights: task → relative weight, e.g. :data:`DEFAULT_TASK_WEIGHTS`. Tasks left out
            get weight 0. Records supporting none of the weighted tasks are never drawn (OCR-only
            training on default data uses just the scenes with a word).
        batch_size: scenes per batch (all different), at most the number of usable records.
        max_prompt_len, max_answer_len: limits in tokens, EOS included (``PaLI3Config``'s).
        seed: the data order; with ``step`` it decides everything.
        caption: ``"canonical"`` (always the scene's canonical caption, so exact match is a fair
            caption metric) or ``"random"`` (any of its phrasings).
        check_lengths: scan every possible example once for length (see the module docstring).

    ``get_batch(step)`` returns::

        pixel_values    (B, 3, H, W) float in [-1, 1]
        input_ids       (B, S) prompt ids with EOS, padded with 0 to the longest prompt
        attention_mask  (B, S) 1 on real prompt tokens
        labels          (B, T) answer ids with EOS, -100 on padding (never scored)
        task            (B,)   index into TASKS of each row's task
    """

    def __init__(
        self,
        images_uint8: Tensor,
        records: Sequence[dict[str, Any]],
        tokenizer: Any,
        task_weights: Mapping[str, float],
        batch_size: int,
        max_prompt_len: int,
        max_answer_len: int,
        seed: int = 0,
        *,
        caption: str = "canonical",
        check_lengths: bool = True,
    ):
        if not isinstance(images_uint8, Tensor) or images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 \
                or images_uint8.shape[1] != 3:
            got = f"{images_uint8.dtype} {tuple(images_uint8.shape)}" if isinstance(images_uint8, Tensor) \
                else type(images_uint8).__name__
            raise ValueError(f"images_uint8 must be a (N, 3, H, W) uint8 tensor, got {got}; make it with "
                             "pali3_edu.recipes.siglip.images_to_uint8(images, image_size).")
        if len(records) != images_uint8.shape[0]:
            raise ValueError(f"{images_uint8.shape[0]} images but {len(records)} records: need one record per image.")
        if records and "image" in records[0]:
            raise ValueError("records must not hold the image (it is in images_uint8): drop the column, "
                             "e.g. dataset.remove_columns('image').to_list().")
        if caption not in ("canonical", "random"):
            raise ValueError(f"caption must be 'canonical' or 'random', got {caption!r}")
        for name, v in (("max_prompt_len", max_prompt_len), ("max_answer_len", max_answer_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{name} must be an int >= 2 (text + EOS), got {v!r}")
        self.images = images_uint8
        self.records = list(records)
        self.tokenizer = tokenizer
        self.task_weights = check_task_weights(task_weights)
        self.max_prompt_len, self.max_answer_len = max_prompt_len, max_answer_len
        self.seed, self.caption = seed, caption
        weighted = [t for t in TASKS if self.task_weights.get(t, 0.0) > 0]
        self.supported = [[t for t in possible_tasks(r) if t in weighted] for r in self.records]
        self.pool = torch.tensor([i for i, s in enumerate(self.supported) if s], dtype=torch.long)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(self.pool):
            raise ValueError(
                f"batch_size must be an int in 1..{len(self.pool)} (the number of records that support one "
                f"of the weighted tasks {weighted}), got {batch_size!r}. Use more scenes or a smaller batch.")
        self.batch_size = batch_size
        if check_lengths:
            self.check_lengths()

    def __len__(self) -> int:
        return len(self.records)

    # ---- lengths -----------------------------------------------------------------------------
    def _lengths(self, texts: Iterable[str]) -> dict[str, int]:
        unique = sorted(set(texts))
        ids = self.tokenizer.batch_encode(unique, padding=False, truncation=False, return_tensors=None)["input_ids"]
        return {t: len(i) for t, i in zip(unique, ids)}

    def _too_long(self, where: str, ex: dict[str, str], part: str, n: int) -> ValueError:
        limit = self.max_prompt_len if part == "prefix" else self.max_answer_len
        name = "max_prompt_len" if part == "prefix" else "max_answer_len"
        return ValueError(
            f"{where}: the {ex['task']} {'prompt' if part == 'prefix' else 'answer'} {ex[part]!r} is {n} tokens "
            f"(EOS included) but {name}={limit}. Raise {name} to at least {n} (in PaLI3Config and here), or "
            "make the texts shorter (e.g. fewer objects per scene: max_objects).")

    def check_lengths(self) -> dict[str, int]:
        """Scan every example each usable record can give (every question, every class, every
        object) and raise ``ValueError`` for the longest one over a limit. Returns the longest
        ``{"prompt": n, "answer": n}`` in tokens, EOS included."""
        found = [(i, ex) for i in self.pool.tolist() for t in self.supported[i]
                 for ex in all_examples(self.records[i], t, self.caption)]
        lengths = self._lengths(text for _, ex in found for text in (ex["prefix"], ex["suffix"]))
        longest = {"prompt": 0, "answer": 0}
        for part, key, limit in (("prefix", "prompt", self.max_prompt_len), ("suffix", "answer", self.max_answer_len)):
            i, ex = max(found, key=lambda f: lengths[f[1][part]])
            longest[key] = lengths[ex[part]]
            if longest[key] > limit:
                raise self._too_long(f"Record {i}", ex, part, longest[key])
        return longest

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, step: int) -> list[tuple[int, dict[str, str]]]:
        """``[(record index, {"prefix", "suffix", "task"}), …]`` for ``step`` (B of them)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        scenes = self.pool[torch.randperm(len(self.pool), generator=g)[: self.batch_size]].tolist()
        out = []
        for i, scene in enumerate(scenes):
            rng = random.Random(f"multimodal/{self.seed}/{step}/{i}")  # str seeds are stable across runs
            tasks = self.supported[scene]
            task = rng.choices(tasks, weights=[self.task_weights[t] for t in tasks])[0]
            out.append((scene, make_example(self.records[scene], task, rng, caption=self.caption)))
        return out

    def examples(self, step: int) -> list[dict[str, Any]]:
        """The texts of ``get_batch(step)``: ``[{"scene", "task", "prefix", "suffix"}, …]``."""
        return [{"scene": scene, **ex} for scene, ex in self.sample(step)]

    def get_batch(self, step: int) -> dict[str, Tensor]:
        """The batch of ``step`` (shapes in the class docstring); a pure function of (seed, step)."""
        drawn = self.sample(step)
        prompts = [ex["prefix"] for _, ex in drawn]
        answers = [ex["suffix"] for _, ex in drawn]
        enc = self.tokenizer.batch_encode(prompts, padding="longest", truncation=False, return_tensors="pt")
        ans = self.tokenizer.batch_encode(answers, padding="longest", truncation=False, return_tensors="pt")
        for part, mask, limit in (("prefix", enc["attention_mask"], self.max_prompt_len),
                                  ("suffix", ans["attention_mask"], self.max_answer_len)):
            lengths = mask.sum(1)
            if int(lengths.max()) > limit:
                row = int(lengths.argmax())
                raise self._too_long(f"Step {step}, row {row} (record {drawn[row][0]})", drawn[row][1], part,
                                     int(lengths[row]))
        scenes = torch.tensor([scene for scene, _ in drawn])
        return {
            "pixel_values": _uint8_to_pixels(self.images[scenes]),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": ans["input_ids"].masked_fill(ans["attention_mask"] == 0, IGNORE_INDEX),
            "task": torch.tensor([TASKS.index(ex["task"]) for _, ex in drawn], dtype=torch.long),
        }

    # ---- the mixture -------------------------------------------------------------------------
    def task_counts(self, steps: Iterable[int] | int) -> Counter:
        """How many examples of each task the batches of ``steps`` (an int n means steps 0..n-1) hold."""
        steps = range(steps) if isinstance(steps, int) else steps
        return Counter(ex["task"] for s in steps for _, ex in self.sample(s))

    def task_fractions(self) -> dict[str, float]:
        """The expected share of each task in a batch: the per-record task probabilities
        (weights renormalised over the tasks the record supports), averaged over usable records."""
        totals = dict.fromkeys(TASKS, 0.0)
        for i in self.pool.tolist():
            tasks = self.supported[i]
            norm = sum(self.task_weights[t] for t in tasks)
            for t in tasks:
                totals[t] += self.task_weights[t] / norm
        return {t: v / len(self.pool) for t, v in totals.items()}


def _uint8_to_pixels(x: Tensor) -> Tensor:
    # Imported on use: the recipes package imports this module (a top-level import would be circular).
    from pali3_edu.recipes.siglip import uint8_to_pixels

    return uint8_to_pixels(x)


def load_multimodal(
    tokenizer: Any,
    split: str,
    num_scenes: int,
    image_size: int,
    task_weights: Mapping[str, float],
    batch_size: int,
    max_prompt_len: int,
    max_answer_len: int,
    seed: int = 0,
    *,
    caption: str = "canonical",
    **shapesworld_kwargs: Any,
) -> MultimodalData:
    """A ShapesWorld split (cached under ``data/``) as :class:`MultimodalData` at ``image_size``.

    Scenes are rendered at ``image_size`` (or at ShapesWorld's smallest size, 32 px, and resized
    down for smaller models). ``shapesworld_kwargs`` go to
    :func:`~pali3_edu.data.shapesworld.load_shapesworld` (``min_objects``, ``max_objects``,
    ``word_prob``).
    """
    from pali3_edu.data.shapesworld import MIN_IMAGE_SIZE, load_shapesworld
    from pali3_edu.recipes.siglip import images_to_uint8

    ds = load_shapesworld(split, num_scenes, image_size=max(MIN_IMAGE_SIZE, image_size), **shapesworld_kwargs)
    images = images_to_uint8(ds["image"], image_size)
    records = ds.remove_columns("image").to_list()
    return MultimodalData(images, records, tokenizer, task_weights, batch_size, max_prompt_len, max_answer_len,
                          seed, caption=caption)


__all__ = ["DEFAULT_TASK_WEIGHTS", "MultimodalData", "all_examples", "check_task_weights", "load_multimodal"]
