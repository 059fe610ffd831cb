"""ShapesWorld streamed: PaLI-3 training batches generated on the fly, in DataLoader workers.

A cached data set (:func:`~pali3_edu.data.shapesworld.load_shapesworld`) is the right tool for the
lessons: a few thousand scenes, built once, shared by every run. At GPU scale it is not: a
million scenes would take most of an hour of one core and a few gigabytes of PNGs (about 2 KB a
scene at 224 px, 6 KB at 448 px) before the first step, while generating and drawing one scene
takes about a millisecond. So the GPU presets *stream*: every batch is generated when it is
needed, in background processes, while the GPU trains.

Three pieces:

- :class:`StepStream`: a ``torch.utils.data.IterableDataset`` of ``(step, batch)`` pairs. With
  ``W`` DataLoader workers, worker ``w`` makes the batches of steps ``start + w``,
  ``start + w + W``, … and the DataLoader hands them out in turn, so the batches come in step
  order.
- :class:`ShapesWorldStream`: the batch of step ``s`` is a pure function of ``(seed, s)``: it
  draws ``batch_size`` different scenes of the **train** split, picks a task for each from the
  task weights and builds the batch exactly as :class:`~pali3_edu.data.multimodal.MultimodalData`
  does (that class builds it: it is given this step's scenes). The number of workers, a restart or a
  resume never change a batch.
- :class:`StreamLoader`: the ``get_batch(step)`` interface of the training loop
  (:func:`pali3_edu.train.train`) on top of a ``torch.utils.data.DataLoader`` (``num_workers``
  processes, pinned memory on CUDA, ``prefetch_factor`` batches ready per worker). Asked for
  another step than the next one (a resumed run asks for step ``k`` first), it restarts the
  DataLoader at that step.

Only training scenes are ever generated: the seeds come from the train split's own range
(``SPLIT_SEEDS["train"] + i`` with ``i < num_scenes``, disjoint from the val/test/compositional
ranges) and scenes are generated with ``split="train"``, which never draws the colour-shape pairs
that only the compositional split holds (``HELDOUT_COMBOS``).

    stream = ShapesWorldStream(tok, DEFAULT_TASK_WEIGHTS, batch_size=64, max_prompt_len=24,
                               max_answer_len=40, image_size=224, num_scenes=1_000_000)
    data = StreamLoader(stream, num_workers=8)     # pinned memory when CUDA is available
    batch = data.get_batch(0)                      # equal to stream.batch(0)
    stream.examples(0)[:2]                         # [{"seed": 17, "task": "vqa", "prefix": ..., ...}]
"""

from __future__ import annotations

import copy
import itertools
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pali3_edu.data.multimodal import MultimodalData, check_task_weights
from pali3_edu.data.shapesworld import _SEEDS_PER_SPLIT as SEEDS_PER_SPLIT
from pali3_edu.data.shapesworld import (
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    Scene,
    ShapesWorldConfig,
    generate_scene,
    render,
    scene_record,
    split_seeds,
)
from pali3_edu.data.tasks import TASKS, possible_tasks

#: Environment variable that sets the default number of DataLoader workers of :class:`StreamLoader`.
WORKERS_ENV_VAR = "PALI3_EDU_DATA_WORKERS"

RecordFn = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _check_int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        where = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an int {where}, got {value!r}{hint}")
    return int(value)


def default_num_workers() -> int:
    """DataLoader workers for :class:`StreamLoader` when none are given.

    ``$PALI3_EDU_DATA_WORKERS`` if set; otherwise, on a machine with CUDA, one worker per CPU core
    left after the training process (at most 8; under ``torchrun`` the cores are shared among the
    ``$LOCAL_WORLD_SIZE`` processes of the machine); without CUDA 0, i.e. batches are made in the
    training process between steps (on a CPU the training itself needs the cores).
    """
    env = os.environ.get(WORKERS_ENV_VAR)
    if env is not None and env.strip():
        try:
            return _check_int(f"${WORKERS_ENV_VAR}", int(env), 0)
        except ValueError as e:
            raise ValueError(f"${WORKERS_ENV_VAR}={env!r}: set it to a number of workers >= 0 (or unset it).") from e
    if not torch.cuda.is_available():
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    return max(1, min(8, cores // processes - 1))


def images_to_uint8_fast(images: Sequence[Any], image_size: int) -> Tensor:
    """PIL images → ``(N, 3, image_size, image_size)`` uint8, equal to
    :func:`pali3_edu.recipes.siglip.images_to_uint8` (which takes the float route through
    ``images_to_batch``); images that are already RGB at ``image_size`` are copied directly,
    which is what a freshly rendered scene is, and much faster at 224 px and more."""
    from pali3_edu.recipes.siglip import images_to_uint8

    if all(getattr(im, "mode", None) == "RGB" and im.size == (image_size, image_size) for im in images):
        return torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).permute(0, 3, 1, 2) \
            .contiguous()
    return images_to_uint8(list(images), image_size)


def step_mixture(
    images_uint8: Tensor,
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    task_weights: Mapping[str, float],
    max_prompt_len: int,
    max_answer_len: int,
    seed: int,
    caption: str = "canonical",
) -> MultimodalData:
    """A :class:`~pali3_edu.data.multimodal.MultimodalData` over exactly the ``B`` records of one
    step, with ``batch_size=B``: its ``get_batch(step)`` is the batch of all of them (in an order
    and with tasks decided by ``(seed, step)``), its ``examples(step)`` the texts of that batch
    (``"scene"`` indexes ``records``). Every record must support one of the weighted tasks.

    ``get_batch(step)`` gives ``pixel_values`` ``(B, 3, H, W)`` float in [-1, 1], ``input_ids`` and
    ``attention_mask`` ``(B, S)``, ``labels`` ``(B, T)`` (-100 on padding) and ``task`` ``(B,)``.
    """
    return MultimodalData(images_uint8, records, tokenizer, task_weights, len(records), max_prompt_len,
                          max_answer_len, seed, caption=caption, check_lengths=False)


# ---------------------------------------------------------------------------------------------
# A stream of (step, batch) pairs
# ---------------------------------------------------------------------------------------------


class StepStream(IterableDataset):
    """An endless ``IterableDataset`` of ``(step, batch)`` pairs from ``start_step`` on.

    Subclasses implement :meth:`batch` (the batch of one step, a pure function of the step), or
    override :meth:`batches` when their source can only be read in order. Under a DataLoader with
    ``W`` workers, worker ``w`` yields the steps ``start_step + w + k·W`` (k = 0, 1, …): together
    the workers make every step once, and the DataLoader returns them in step order.
    """

    start_step: int = 0

    def batch(self, step: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def batches(self, first: int, stride: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
        """``(step, batch)`` for steps ``first, first + stride, …`` (endless)."""
        for step in itertools.count(first, stride):
            yield step, self.batch(step)

    def starting_at(self, step: int) -> StepStream:
        """A shallow copy that starts at ``step`` (what a resumed run iterates)."""
        out = copy.copy(self)
        out.start_step = _check_int("step", step, 0)
        return out

    def __iter__(self) -> Iterator[tuple[int, dict[str, Tensor]]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.batches(self.start_step + worker, workers)


# ---------------------------------------------------------------------------------------------
# ShapesWorld, generated on the fly
# ---------------------------------------------------------------------------------------------


class ShapesWorldStream(StepStream):
    """Mixed-task PaLI-3 batches of ShapesWorld **train** scenes, generated when needed.

    Args:
        tokenizer: the course tokenizer (``batch_encode``).
        task_weights: task → relative weight (:data:`~pali3_edu.data.multimodal.DEFAULT_TASK_WEIGHTS`).
            A scene that supports none of the weighted tasks is never drawn.
        batch_size: scenes per batch, all different.
        max_prompt_len, max_answer_len: limits in tokens, EOS included (``PaLI3Config``'s).
        image_size: the model's resolution; scenes are drawn at it (at 32 px, ShapesWorld's
            smallest size, and resized down for smaller models).
        seed: the data order; with the step it decides every batch.
        num_scenes: scenes are drawn from the first ``num_scenes`` seeds of the train split
            (``None``: its whole range of 10⁸ seeds). Each batch draws ``batch_size`` different
            ones, uniformly.
        split: only ``"train"``; held-out splits are for evaluation and never streamed.
        caption: ``"canonical"`` or ``"random"`` (as in ``MultimodalData``).
        record_fn: applied to the list of records of every batch before the examples are made
            (the PaLI-3 recipes quantise the boxes with it); it must return one record per scene,
            in order, and keep the tasks each supports. A module-level function (or a
            ``functools.partial`` of one) also works with spawned workers; a lambda only with fork.
        min_objects, max_objects, word_prob: the ShapesWorld settings (``ShapesWorldConfig``).
        check_scenes: before anything is streamed, every example the first ``check_scenes``
            scenes can give is checked against the length limits (a clear error now instead of
            one in a worker at step 3000); 0 skips the check.
        start_step: the first step an iteration yields (:class:`StreamLoader` sets it).

    ``batch(step)`` returns what :class:`~pali3_edu.data.multimodal.MultimodalData` returns::

        pixel_values    (B, 3, image_size, image_size) float in [-1, 1]
        input_ids       (B, S) prompt ids with EOS, padded with 0 to the longest prompt
        attention_mask  (B, S) 1 on real prompt tokens
        labels          (B, T) answer ids with EOS, -100 on padding
        task            (B,)   index into TASKS of each row's task
    """

    #: How many scenes a step may draw (beyond ``batch_size``) that support none of the tasks
    #: before it gives up with an error.
    max_skipped_per_batch: int = 1000

    def __init__(
        self,
        tokenizer: Any,
        task_weights: Mapping[str, float],
        batch_size: int,
        max_prompt_len: int,
        max_answer_len: int,
        image_size: int,
        seed: int = 0,
        *,
        num_scenes: int | None = None,
        split: str = "train",
        caption: str = "canonical",
        record_fn: RecordFn | None = None,
        min_objects: int = 1,
        max_objects: int = 3,
        word_prob: float = 0.3,
        check_scenes: int = 256,
        start_step: int = 0,
    ):
        if split != "train":
            raise ValueError(
                f"split={split!r}: a stream generates training scenes only, so that the val, test and "
                "compositional scenes stay unseen. Evaluate on a fixed held-out set instead: "
                f"load_shapesworld({split!r}, num_scenes) (see pali3_edu.evaluate).")
        image_size = _check_int("image_size", image_size, 1, MAX_IMAGE_SIZE,
                                " (the model's resolution in pixels; ShapesWorld draws at most 448 px)")
        self.render_size = max(MIN_IMAGE_SIZE, image_size)
        self.cfg = ShapesWorldConfig(image_size=self.render_size, min_objects=min_objects, max_objects=max_objects,
                                     word_prob=word_prob)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        if num_scenes is not None:
            num_scenes = _check_int("num_scenes", num_scenes, 1, SEEDS_PER_SPLIT,
                                    " (or None for the train split's whole seed range)")
        self.seeds = split_seeds("train", SEEDS_PER_SPLIT if num_scenes is None else num_scenes)
        if self.batch_size > len(self.seeds):
            raise ValueError(f"batch_size={batch_size} is larger than num_scenes={len(self.seeds)}: a batch holds "
                             "different scenes. Use more scenes or a smaller batch.")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if caption not in ("canonical", "random"):
            raise ValueError(f"caption must be 'canonical' or 'random', got {caption!r}")
        for name, value in (("max_prompt_len", max_prompt_len), ("max_answer_len", max_answer_len)):
            _check_int(name, value, 2, hint=" (text + EOS, in tokens)")
        if record_fn is not None and not callable(record_fn):
            raise TypeError(f"record_fn must be a function list[record] -> list[record] or None, got {record_fn!r}")
        self.tokenizer = tokenizer
        self.task_weights = check_task_weights(task_weights)
        self.weighted = [t for t in TASKS if self.task_weights.get(t, 0.0) > 0]
        self.max_prompt_len, self.max_answer_len = max_prompt_len, max_answer_len
        self.image_size, self.seed, self.caption = image_size, int(seed), caption
        self.record_fn = record_fn
        self.start_step = _check_int("start_step", start_step, 0)
        self._check(_check_int("check_scenes", check_scenes, 0))

    def _check(self, n: int) -> None:
        """Check every example of the first ``n`` scenes against the length limits
        (``MultimodalData.check_lengths``: the error names the longest text and the limit it needs)."""
        n = min(n, len(self.seeds))
        if n == 0:
            return
        usable = [r for r in self._records([generate_scene(s, self.cfg, "train") for s in self.seeds[:n]])
                  if self._supports(r)]
        if usable:
            images = torch.zeros(len(usable), 3, 1, 1, dtype=torch.uint8)  # the check reads only the texts
            MultimodalData(images, usable, self.tokenizer, self.task_weights, 1, self.max_prompt_len,
                           self.max_answer_len, self.seed, caption=self.caption, check_lengths=True)

    def __repr__(self) -> str:
        return (f"ShapesWorldStream(batch_size={self.batch_size}, image_size={self.image_size}, "
                f"num_scenes={len(self.seeds)}, task_weights={self.task_weights}, seed={self.seed}, "
                f"start_step={self.start_step})")

    def _records(self, scenes: list[Scene]) -> list[dict[str, Any]]:
        records = [scene_record(s, with_image=False) for s in scenes]
        if self.record_fn is not None:
            records = list(self.record_fn(records))
            if len(records) != len(scenes):
                raise ValueError(f"record_fn returned {len(records)} records for {len(scenes)} scenes; it must "
                                 "return one record per scene, in order.")
        return records

    def _supports(self, record: dict[str, Any]) -> bool:
        return any(t in self.weighted for t in possible_tasks(record))

    def draw(self, step: int) -> list[Scene]:
        """The ``batch_size`` different training scenes of ``step`` (a pure function of seed and step)."""
        step = _check_int("step", step, 0)
        rng = random.Random(f"shapesworld-stream/{self.seed}/{step}")  # str seeds are stable across runs
        chosen: list[Scene] = []
        seen: set[int] = set()
        skipped = 0
        while len(chosen) < self.batch_size:
            if skipped > self.max_skipped_per_batch or len(seen) == len(self.seeds):
                raise ValueError(
                    f"Step {step}: only {len(chosen)} of {self.batch_size} scenes support one of the tasks "
                    f"{self.weighted} after drawing {len(seen)} of the first {len(self.seeds)} training scenes. "
                    "Use more scenes (num_scenes), a smaller batch, or other task weights (word_prob > 0 for ocr).")
            i = rng.randrange(len(self.seeds))
            if i in seen:
                continue
            seen.add(i)
            scene = generate_scene(self.seeds[i], self.cfg, "train")
            if self._supports(scene_record(scene, with_image=False)):
                chosen.append(scene)
            else:
                skipped += 1
        return chosen

    def seeds_of(self, step: int) -> list[int]:
        """The ShapesWorld seeds of the scenes of ``step``, in the order :meth:`draw` returns them."""
        return [s.seed for s in self.draw(step)]

    def _mixture(self, scenes: list[Scene], images_uint8: Tensor) -> MultimodalData:
        return step_mixture(images_uint8, self._records(scenes), self.tokenizer, self.task_weights,
                            self.max_prompt_len, self.max_answer_len, self.seed, self.caption)

    def batch(self, step: int) -> dict[str, Tensor]:
        """The batch of ``step`` (shapes in the class docstring); a pure function of (seed, step)."""
        scenes = self.draw(step)
        images = images_to_uint8_fast([render(s, self.render_size) for s in scenes], self.image_size)
        return self._mixture(scenes, images).get_batch(step)

    def examples(self, step: int) -> list[dict[str, Any]]:
        """The texts of ``batch(step)``, row by row: ``[{"seed", "task", "prefix", "suffix"}, …]``."""
        scenes = self.draw(step)
        no_pixels = torch.zeros(len(scenes), 3, 1, 1, dtype=torch.uint8)  # texts only: nothing to draw
        out = []
        for ex in self._mixture(scenes, no_pixels).examples(step):
            index = ex.pop("scene")
            out.append({"seed": scenes[index].seed, **ex})
        return out


# ---------------------------------------------------------------------------------------------
# get_batch(step) on top of a DataLoader
# ---------------------------------------------------------------------------------------------


class StreamLoader:
    """``get_batch(step)`` for the training loop, served by a ``torch.utils.data.DataLoader``.

    Args:
        stream: a :class:`StepStream` (e.g. :class:`ShapesWorldStream`).
        num_workers: DataLoader worker processes (0: batches are made in this process when asked
            for); ``None``: :func:`default_num_workers`.
        pin_memory: page-locked batches, so the copy to the GPU overlaps the computation; ``None``:
            on when CUDA is available.
        prefetch_factor: batches each worker keeps ready (ignored without workers).
        timeout: seconds to wait for a worker's batch before raising (0: forever).
        multiprocessing_context: ``"fork"``, ``"spawn"``, ``"forkserver"`` or ``None`` (the
            platform's default).

    ``get_batch(step)`` returns ``stream.batch(step)``, whatever the number of workers. The steps
    are expected in order (0, 1, 2, … or k, k+1, … after a resume); asking for any other step than
    the next one restarts the DataLoader at that step (a second or so with workers). The loader
    never draws from the global random number generators, so training's own random state (dropout,
    a resumed run's restored state) is not disturbed.

    Workers hand their batches over through shared memory (``/dev/shm``): a float batch of 128
    images at 224 px is 77 MB, and ``num_workers × prefetch_factor`` of them can wait there. In a
    container with a small ``/dev/shm`` (Docker's default is 64 MB) give it more
    (``--shm-size``) or use fewer workers (``$PALI3_EDU_DATA_WORKERS``).
    """

    def __init__(
        self,
        stream: StepStream,
        num_workers: int | None = None,
        *,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
        timeout: float = 0.0,
        multiprocessing_context: str | None = None,
    ):
        if not isinstance(stream, StepStream):
            raise TypeError(f"stream must be a StepStream (e.g. ShapesWorldStream), got {type(stream).__name__}.")
        self.stream = stream
        self.num_workers = default_num_workers() if num_workers is None else _check_int("num_workers", num_workers, 0)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory=True needs CUDA (pinned memory speeds up copies to a GPU); "
                             "use pin_memory=None to pin only when CUDA is available.")
        self.prefetch_factor = _check_int("prefetch_factor", prefetch_factor, 1)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0 (0: wait forever), got {timeout!r}")
        contexts = (None, "fork", "spawn", "forkserver")
        if multiprocessing_context not in contexts:
            raise ValueError(f"multiprocessing_context must be one of {contexts}, got {multiprocessing_context!r}")
        self.timeout, self.multiprocessing_context = float(timeout), multiprocessing_context
        self._iter: Iterator[tuple[int, dict[str, Tensor]]] | None = None
        self._next: int | None = None
        self._early: dict[int, dict[str, Tensor]] = {}  # batches that came before their turn
        self.restarts = 0  # how many times a DataLoader was started (1 for a run that never jumps)
        self.discarded = 0  # batches made but never asked for (0 when the workers share the steps)

    def __repr__(self) -> str:
        return (f"StreamLoader({self.stream!r}, num_workers={self.num_workers}, pin_memory={self.pin_memory}, "
                f"prefetch_factor={self.prefetch_factor})")

    def _start(self, step: int) -> None:
        self.close()
        workers = self.num_workers
        loader = DataLoader(
            self.stream.starting_at(step),
            batch_size=None,  # the stream yields whole batches
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if workers else None,
            timeout=self.timeout if workers else 0,
            multiprocessing_context=self.multiprocessing_context if workers else None,
            # its own generator: starting a DataLoader draws a seed from this one instead of the
            # global generator, which would shift training's random numbers at every (re)start
            generator=torch.Generator().manual_seed(0),
        )
        self._iter = iter(loader)
        self._next = step
        self.restarts += 1

    def get_batch(self, step: int) -> dict[str, Tensor]:
        """The batch of ``step`` (the stream's ``batch(step)``), from the DataLoader."""
        step = _check_int("step", step, 0)
        if self._iter is None or step != self._next:
            self._start(step)
        assert self._iter is not None
        while step not in self._early:
            got, batch = next(self._iter)
            if got >= step and got not in self._early:
                self._early[got] = batch
            else:
                self.discarded += 1
            if len(self._early) > 4 * max(1, self.num_workers) * self.prefetch_factor + 4:
                raise RuntimeError(f"Waiting for step {step}, the DataLoader returned steps {sorted(self._early)}: "
                                   "the stream does not yield its steps in order.")
        self._next = step + 1
        return self._early.pop(step)

    def examples(self, step: int) -> list[dict[str, Any]]:
        """The stream's ``examples(step)`` (the texts of a batch), without the DataLoader."""
        return self.stream.examples(step)

    def close(self) -> None:
        """Stop the workers (a later ``get_batch`` starts new ones)."""
        it, self._iter = self._iter, None
        self._early.clear()
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> StreamLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean up
            pass


def stream_shapesworld(
    tokenizer: Any,
    task_weights: Mapping[str, float],
    batch_size: int,
    max_prompt_len: int,
    max_answer_len: int,
    image_size: int,
    seed: int = 0,
    *,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    **stream_kwargs: Any,
) -> StreamLoader:
    """A :class:`StreamLoader` over a :class:`ShapesWorldStream` (``stream_kwargs`` go to it:
    ``num_scenes``, ``record_fn``, ``word_prob``, …)."""
    stream = ShapesWorldStream(tokenizer, task_weights, batch_size, max_prompt_len, max_answer_len, image_size,
                               seed, **stream_kwargs)
    return StreamLoader(stream, num_workers, pin_memory=pin_memory, prefetch_factor=prefetch_factor)


__all__ = [
    "ShapesWorldStream", "StepStream", "StreamLoader", "WORKERS_ENV_VAR", "default_num_workers",
    "images_to_uint8_fast", "step_mixture", "stream_shapesworld",
]
