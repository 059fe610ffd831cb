"""Stage 0 for the language side: pretrain the encoder-decoder with UL2's mixture of denoisers.

Pipeline (all deterministic):

1. **text** -- ShapesWorld scene descriptions, captions and QA sentences
   (:func:`pali3_edu.data.shapesworld.text_corpus`), train and val splits from disjoint seeds;
2. **tokens** -- every text tokenised and all of them concatenated into one long stream, cut into
   chunks of ``chunk_len`` raw tokens (T5's "concatenate and split" packing: no padding is
   wasted, and a chunk may start mid-sentence);
3. **denoising** -- each chunk of a batch gets a denoiser from the mixture
   (:func:`pali3_edu.ul2.ul2_batch`); ``get_batch(step)`` draws the chunks *and* the denoisers
   from a generator seeded by ``step``, so training resumes exactly after an interruption;
4. **training** -- :func:`pali3_edu.train.train`, loss = mean cross-entropy over target tokens
   (returned with its token count, so that the loop's mean is over the tokens of the whole
   step, however they are split over processes and micro-batches), also logged per denoiser
   kind (R / X / S);
5. **validation** -- a fixed set of val chunks, corrupted once per denoiser, gives one loss per
   denoiser, next to a unigram baseline (the loss of always predicting the token frequencies).

``load_or_pretrain_ul2("tiny-cpu")`` returns the trained run (``model, tokenizer, history =
run``) from the cache under ``data/runs/``, training it when it is missing or stale; the
multimodal lessons start from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pali3_edu.config import EncDecConfig, get_config
from pali3_edu.encdec import EncoderDecoder
from pali3_edu.recipes.base import Recipe, Stage, TrainedRun, load_or_train, register_stage
from pali3_edu.recipes.base import get_recipe as _get_recipe
from pali3_edu.tokens import IGNORE_INDEX
from pali3_edu.train import History, TrainConfig, train
from pali3_edu.ul2 import UL2Mixture, ul2_batch


@dataclass
class UL2DataSettings:
    """The text and the denoisers of a UL2 run."""

    train_scenes: int = 2000  # scenes whose descriptions make the training text
    val_scenes: int = 100
    chunk_len: int = 64  # raw tokens per example, before corruption
    batch_size: int = 32
    # R 40 % / X 40 % / S 20 %: a documented default, the paper's proportions are not published
    mixture_weights: tuple[float, ...] = field(default_factory=lambda: UL2Mixture().weights)

    @property
    def max_input_len(self) -> int:
        return self.chunk_len + 2  # [mode] ... EOS: nothing is ever cropped

    @property
    def max_target_len(self) -> int:
        return self.chunk_len + 1  # ... EOS


def _recipe(preset: str, model: EncDecConfig, data: UL2DataSettings, **train: Any) -> Recipe:
    train = {"log_every": 10, "checkpoint_every": 100, "weight_decay": 0.01, **train}
    return Recipe("ul2", preset, model, data, TrainConfig(**train))


PRESETS: dict[str, Recipe] = {
    # the lessons' run: a few minutes on a 2-core CPU
    "tiny-cpu": _recipe("tiny-cpu", get_config("encdec", "tiny-cpu"), UL2DataSettings(),
                        steps=400, lr=3e-3, warmup_steps=40),
    # for tests: a micro model and little text, seconds
    "micro": _recipe("micro", get_config("encdec", "tiny-cpu", d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                         num_decoder_layers=2, num_heads=4),
                     UL2DataSettings(train_scenes=60, val_scenes=10, chunk_len=24, batch_size=8),
                     steps=60, lr=1e-2, warmup_steps=5),
    # one GPU: the ``small`` encoder-decoder, more text, longer chunks
    "small": _recipe("small", get_config("encdec", "small"),
                     UL2DataSettings(train_scenes=20000, val_scenes=500, chunk_len=128, batch_size=128),
                     steps=3000, lr=2e-3, warmup_steps=200, amp_dtype="bf16"),
}


def get_recipe(preset: str = "tiny-cpu", **overrides: Any) -> Recipe:
    """A copy of a UL2 recipe (``tiny-cpu``, ``micro``, ``small``) with ``overrides``."""
    return _get_recipe("ul2", preset, **overrides)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def token_stream(tokenizer, num_scenes: int, split: str) -> torch.Tensor:
    """All texts of ``num_scenes`` ShapesWorld scenes of ``split``, tokenised (no EOS) and
    concatenated → ``(total_tokens,)`` int64."""
    from pali3_edu.data.shapesworld import text_corpus

    texts = text_corpus(num_scenes, split)
    ids: list[int] = []
    for start in range(0, len(texts), 512):  # a few large encode calls, not 30k small ones
        for piece in tokenizer.batch_encode(texts[start:start + 512], padding=False,
                                            add_eos=False, return_tensors=None)["input_ids"]:
            ids.extend(piece)
    return torch.tensor(ids, dtype=torch.long)


def pack_chunks(stream: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """Cut a token stream into ``(num_chunks, chunk_len)``; the incomplete tail is dropped."""
    n = len(stream) // chunk_len
    if n == 0:
        raise ValueError(f"Only {len(stream)} tokens: not enough for one chunk of {chunk_len}. "
                         "Use more scenes or a shorter chunk_len.")
    return stream[: n * chunk_len].view(n, chunk_len)


@dataclass
class UL2Data:
    """Packed train/val chunks and the batch maker for one pretraining run."""

    tokenizer: Any
    cfg: UL2DataSettings
    seed: int
    train_chunks: torch.Tensor  # (num_train_chunks, chunk_len)
    val_chunks: torch.Tensor  # (num_val_chunks, chunk_len)

    @classmethod
    def build(cls, tokenizer, recipe: Recipe) -> UL2Data:
        cfg: UL2DataSettings = recipe.data
        train = pack_chunks(token_stream(tokenizer, cfg.train_scenes, "train"), cfg.chunk_len)
        val = pack_chunks(token_stream(tokenizer, cfg.val_scenes, "val"), cfg.chunk_len)
        return cls(tokenizer, cfg, recipe.train.seed, train, val)

    @property
    def mixture(self) -> UL2Mixture:
        return UL2Mixture(weights=self.cfg.mixture_weights)

    def _batch(self, chunks: torch.Tensor, g: torch.Generator,
               denoiser_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return ul2_batch(list(chunks), self.mixture, self.tokenizer, g, self.cfg.max_input_len,
                         self.cfg.max_target_len, denoiser_ids=denoiser_ids)

    def get_batch(self, step: int) -> dict[str, torch.Tensor]:
        """The training batch for ``step``: same step, same batch (chunks, denoisers, spans)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = torch.randint(len(self.train_chunks), (self.cfg.batch_size,), generator=g)
        return self._batch(self.train_chunks[rows], g)

    def val_batches(self, max_chunks: int = 64) -> list[dict[str, torch.Tensor]]:
        """One fixed batch per denoiser: the first ``max_chunks`` val chunks, all corrupted by
        that denoiser (seeded, so every call gives the same batches)."""
        chunks = self.val_chunks[:max_chunks]
        out = []
        for i in range(len(self.mixture.denoisers)):
            g = torch.Generator().manual_seed(10_000 + i)
            out.append(self._batch(chunks, g, torch.full((len(chunks),), i)))
        return out


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy ``(batch, target)`` (0 where labels are ``IGNORE_INDEX``, i.e. -100) and the mask."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   labels=batch["labels"]).logits
    labels = batch["labels"]
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none").view_as(labels)
    return ce, labels != IGNORE_INDEX


def make_loss_fn(mixture: UL2Mixture):
    """``loss_fn(model, batch)`` for :func:`pali3_edu.train.train`: the mean target-token
    cross-entropy and ``tokens``, the number of target tokens it averaged (the loop weighs each
    process's and micro-batch's mean by it: the step's loss is the mean over all its tokens),
    plus the same loss per denoiser kind (``loss_R``, ``loss_X``, ``loss_S``) for the kinds
    present in the batch (logged, not optimised separately; averaged over micro-batches and
    processes, not weighted by their tokens)."""
    kinds = [d.kind for d in mixture.denoisers]

    def loss_fn(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ce, mask = token_losses(model, batch)
        tokens = mask.sum()
        out = {"loss": ce.sum() / tokens.clamp_min(1), "tokens": tokens}
        with torch.no_grad():
            kind_of_row = [kinds[int(d)] for d in batch["denoiser"]]
            for kind in sorted(set(kind_of_row)):
                rows = torch.tensor([k == kind for k in kind_of_row], device=ce.device)
                out[f"loss_{kind}"] = ce[rows].sum() / mask[rows].sum()
        return out

    return loss_fn


@torch.no_grad()
def validation_losses(model, data: UL2Data, max_chunks: int = 64) -> dict[str, float]:
    """Mean target-token loss on held-out text, one number per denoiser (by name)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for d, batch in zip(data.mixture.denoisers, data.val_batches(max_chunks)):
        batch = {k: v.to(device) for k, v in batch.items()}
        ce, mask = token_losses(model, batch)
        out[d.name] = float(ce.sum() / mask.sum())
    model.train(was_training)
    return out


@torch.no_grad()
def validation_breakdown(model, data: UL2Data, max_chunks: int = 64) -> dict[str, dict[str, float]]:
    """Per denoiser: loss and accuracy on the **first token of each span** (the token right
    after a sentinel; for S the first token after the prefix) and on all **other** target
    tokens. The first token can only come from the encoder (via cross-attention); the others
    can also be guessed from the decoder's own context, like a language model would."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sentinels = torch.tensor(data.tokenizer.sentinel_ids, device=device)
    out = {}
    for d, batch in zip(data.mixture.denoisers, data.val_batches(max_chunks)):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).logits
        labels = batch["labels"]
        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none").view_as(labels)
        correct = logits.argmax(-1) == labels
        real = labels != IGNORE_INDEX
        if d.kind == "S":
            first = torch.zeros_like(real)
            first[:, 0] = True
        else:
            prev = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
            first = torch.isin(prev, sentinels)
        first &= real
        other = real & ~first
        out[d.name] = {"first_loss": float(ce[first].mean()), "first_acc": float(correct[first].float().mean()),
                       "other_loss": float(ce[other].mean()), "other_acc": float(correct[other].float().mean())}
    model.train(was_training)
    return out


def unigram_baseline(data: UL2Data, batches: int = 20, max_chunks: int = 64) -> dict[str, float]:
    """Per-denoiser val loss of a model that ignores its input and always predicts the target
    token frequencies seen in ``batches`` training batches (add-one smoothed). A trained model
    must beat it by a wide margin; ``log(vocab)`` is the loss of a uniform guess."""
    vocab = data.tokenizer.padded_vocab_size if hasattr(data.tokenizer, "padded_vocab_size") \
        else data.tokenizer.vocab_size
    counts = torch.ones(vocab, dtype=torch.float64)
    for step in range(batches):
        labels = data.get_batch(10**6 + step)["labels"]
        counts += torch.bincount(labels[labels != IGNORE_INDEX], minlength=vocab).double()
    logp = (counts / counts.sum()).log()
    out = {}
    for d, batch in zip(data.mixture.denoisers, data.val_batches(max_chunks)):
        labels = batch["labels"]
        out[d.name] = float(-logp[labels[labels != IGNORE_INDEX]].mean())
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build_model(recipe: Recipe, tokenizer) -> EncoderDecoder:
    """A fresh, seeded encoder-decoder of the recipe's size, with the tokenizer's vocabulary."""
    torch.manual_seed(recipe.train.seed)
    return EncoderDecoder(dataclasses.replace(recipe.model, vocab_size=tokenizer.padded_vocab_size))


STAGE = register_stage(Stage(
    name="ul2", presets=PRESETS, build_model=build_model,
    build_data=lambda recipe, tokenizer: UL2Data.build(tokenizer, recipe),
    loss_fn=lambda recipe: make_loss_fn(UL2Mixture(weights=recipe.data.mixture_weights)),
))


def pretrain_ul2(
    model,
    data: UL2Data,
    recipe: Recipe,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> History:
    """Train ``model`` on ``data`` with the mixture of denoisers, no cache (``checkpoint``: resume
    from / write to that directory; ``stop_after`` stops early as if interrupted)."""
    return train(model, make_loss_fn(data.mixture), data.get_batch, recipe.train,
                 checkpoint=checkpoint, stop_after=stop_after, progress=progress, device=device)


def load_or_pretrain_ul2(preset: str = "tiny-cpu", **kwargs: Any) -> TrainedRun:
    """The pretrained encoder-decoder of a preset: ``run.model``, ``run.tokenizer``,
    ``run.history``, ``run.loaded`` (see :func:`pali3_edu.recipes.load_or_train`); ``kwargs`` as
    there (``retrain``, ``device``, ``stop_after``, recipe overrides such as ``steps=100``)."""
    return load_or_train("ul2", preset, **kwargs)


def perplexity(loss: float) -> float:
    return math.exp(loss)
