"""A course tokenizer on top of a public T5's SentencePiece model, keeping every T5 id.

**The question.** A public T5 / Flan-T5 / UL2 checkpoint was trained with its own vocabulary:
T5's ``spiece.model`` (32,000 SentencePiece pieces: pad 0, EOS 1, unk 2, then the pieces) plus
100 sentinels ``<extra_id_0>`` … ``<extra_id_99>`` appended by the tokenizer, counting *down* from
the top (``<extra_id_0>`` = 32,099, ``<extra_id_99>`` = 32,000); its embedding table is padded to
32,128 rows. The course's tasks also need ``<loc0000>`` … ``<loc1023>``, ``<seg000>`` …
``<seg127>`` and the UL2 mode tokens ``[NLU]`` ``[NLG]`` ``[S2S]``, which T5 has never seen.

The course's own :class:`~pali3_edu.tokenizer.Tokenizer` appends its special tokens after the
SentencePiece pieces *with the sentinels last* (``<extra_id_0>`` is always the highest id). On
T5's ``spiece.model`` that would give ``<loc0000>`` the id 32,000, which the checkpoint has
trained as ``<extra_id_99>``: every special token would start with the meaning of another. So a
tokenizer for a public checkpoint must lay the ids out differently::

    0 <pad>   1 </s>   2 <unk>   3 … 31,999   T5's SentencePiece pieces     } exactly T5's ids
    32,000 … 32,099   <extra_id_99> … <extra_id_0>                          } (32,100 = original_vocab_size)
    32,100 … 33,123   <loc0000> … <loc1023>                                 } new: untrained rows
    33,124 … 33,251   <seg000> … <seg127>
    33,252 … 33,254   [NLU] [NLG] [S2S]

``vocab_size`` = 33,255, ``padded_vocab_size`` = 33,280.
:func:`~pali3_edu.convert.pretrained.resize_token_embeddings` grows the checkpoint's 32,128 rows to
that, keeping rows 0 … 32,127 bit-identical. (The first 28 ``<loc>`` tokens land on T5's padding
rows 32,100 … 32,127, which no T5 input ever used; the course's ordinal ``<loc>`` initialisation
overwrites all ``<loc>`` rows anyway.)

:class:`T5CourseTokenizer` is that layout. It *is* a course :class:`Tokenizer` (a subclass), so
everything the course does with a tokenizer (``encode``, ``batch_encode``, ``decode``,
``batch_decode``, ``loc_id``, ``loc_ids``, ``seg_id``, ``mode_id``, ``sentinel_id``,
``sentinel_ids``, ``padded_vocab_size``, ``fingerprint``, ``save``/``load`` …) works unchanged;
only ``sentinel_id(i)`` is ``original_vocab_size - 1 - i`` instead of ``vocab_size - 1 - i``.
Its fingerprint differs from a course-layout tokenizer on the same ``spiece.model``.

**UL2's mode tokens.** Here ``[NLU]`` ``[NLG]`` ``[S2S]`` are new single ids, like the course's
own. The public ``google/ul2`` checkpoint's model card writes them as plain text at the start of
the input, which T5's SentencePiece splits into ordinary pieces; to reuse what UL2 learned about
them, build the tokenizer with ``mode_tokens=()`` so that they stay text (then ``mode_id`` is not
available). PaLI-3's task mixture does not use them.

A SentencePiece model that already *contains* ``<extra_id_N>`` pieces (user-defined symbols at the
top of its vocabulary, counting down as T5's) is read the same way: those pieces are the sentinels
and nothing more is appended for them.

>>> tok = load_t5_tokenizer("google/flan-t5-base")          # doctest: +SKIP  (needs the files)
>>> tok.sentinel_id(0), tok.loc_id(0), tok.padded_vocab_size  # doctest: +SKIP
(32099, 32100, 33280)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pali3_edu.tokenizer import CONFIG_FILE, MODEL_FILE, Tokenizer
from pali3_edu.tokens import (
    EOS_ID,
    MODE_TOKENS,
    NUM_LOC_BINS,
    NUM_SEG_TOKENS,
    NUM_SENTINELS,
    PAD_ID,
    UNK_ID,
)

__all__ = ["T5CourseTokenizer", "T5_FORMAT", "load_t5_tokenizer"]

T5_FORMAT = "pali3_edu.t5_tokenizer/1"
COURSE_FORMAT = "pali3_edu.tokenizer/1"  # what Tokenizer.save writes
_MODE_NAMES = tuple(MODE_TOKENS.values())
# Attributes of Tokenizer that T5CourseTokenizer lays out again (checked, so that a change in
# Tokenizer's internals fails loudly here instead of giving wrong ids).
_BASE_ATTRS = ("sp", "num_text_tokens", "_appended", "_first_appended", "_loc_start", "_seg_start",
               "_mode_start", "_sentinel_start", "_control_names", "_special_to_id", "_special_re")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _sentinels_inside(sp: Any) -> int:
    """How many ``<extra_id_N>`` pieces (N = 0, 1, …) the SentencePiece model itself holds; they must
    sit at the top of its vocabulary counting down (``<extra_id_0>`` last), as T5 places them."""
    n, count = sp.get_piece_size(), 0
    while True:
        name = f"<extra_id_{count}>"
        i = sp.piece_to_id(name)
        if sp.id_to_piece(i) != name:
            break
        if i != n - 1 - count:
            raise ValueError(
                f"the SentencePiece model holds {name} at id {i}, not at {n - 1 - count}: T5 "
                "checkpoints expect <extra_id_0> at the top of the vocabulary and the others "
                "counting down below it. This model's sentinels cannot keep T5's ids."
            )
        count += 1
    stray = [p for p in range(n) if re.fullmatch(r"<extra_id_\d+>", sp.id_to_piece(p))]
    if len(stray) != count:
        raise ValueError(
            f"the SentencePiece model holds {len(stray)} <extra_id_N> pieces but only "
            f"<extra_id_0> … <extra_id_{count - 1}> are consecutive: sentinels must be numbered 0, 1, …"
        )
    return count


def _has_sentinels(model_file: Path) -> bool:
    """Does this SentencePiece model hold ``<extra_id_0>`` itself? (False if it cannot be read:
    the constructor then reports the damage.)"""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=model_file.read_bytes())
        return sp.id_to_piece(sp.piece_to_id("<extra_id_0>")) == "<extra_id_0>"
    except (OSError, RuntimeError, IndexError):
        return False


class T5CourseTokenizer(Tokenizer):
    """The course's tokenizer interface on a T5 ``spiece.model``, keeping every T5 id.

    Ids (``n`` SentencePiece pieces, ``S`` sentinels)::

        0 … n-1                  T5's pieces (pad 0, EOS 1, unk 2)
        n … n+S-1                <extra_id_{S-1}> … <extra_id_0>   (original_vocab_size = n+S)
        n+S …                    <loc…>, <seg…>, [NLU] [NLG] [S2S]

    ``num_sentinels`` defaults to 100 (T5's), or to the number of ``<extra_id_N>`` pieces the
    SentencePiece model already holds at its top (:meth:`load` on a checkpoint folder reads
    ``extra_ids`` from its ``tokenizer_config.json``). ``num_loc``, ``num_seg``, ``mode_tokens`` as in
    :class:`Tokenizer`. A model whose pad/EOS/unk are not 0/1/2 is refused (T5 checkpoints
    depend on them: pad is also the decoder's start token).
    """

    def __init__(
        self,
        model_proto: bytes,
        *,
        num_loc: int = NUM_LOC_BINS,
        num_seg: int = NUM_SEG_TOKENS,
        mode_tokens: Sequence[str] | Mapping[str, str] = _MODE_NAMES,
        num_sentinels: int | None = None,
    ) -> None:
        super().__init__(model_proto, num_loc=num_loc, num_seg=num_seg, mode_tokens=mode_tokens,
                         num_sentinels=0)
        missing = [a for a in _BASE_ATTRS if not hasattr(self, a)]
        if missing:  # pragma: no cover - guards against a change in Tokenizer's internals
            raise RuntimeError(f"pali3_edu.tokenizer.Tokenizer no longer has {missing}: update "
                               "T5CourseTokenizer to its new layout code.")
        sp = self.sp
        ids = (sp.pad_id(), sp.eos_id(), sp.unk_id())
        if ids != (PAD_ID, EOS_ID, UNK_ID):
            raise ValueError(
                f"not a T5 SentencePiece model: its pad/EOS/unk ids are {ids}, T5 checkpoints need "
                f"{(PAD_ID, EOS_ID, UNK_ID)}. For a model of your own use pali3_edu.tokenizer.Tokenizer."
            )
        inside = _sentinels_inside(sp)
        if inside:
            if num_sentinels is not None and num_sentinels != inside:
                raise ValueError(
                    f"num_sentinels={num_sentinels} but the SentencePiece model already holds "
                    f"{inside} <extra_id_N> pieces: leave num_sentinels out."
                )
            num_sentinels = inside
        elif num_sentinels is None:
            num_sentinels = NUM_SENTINELS
        if num_sentinels < 0:
            raise ValueError(f"num_sentinels must be >= 0, got {num_sentinels}")

        # Lay the appended ids out again: sentinels first (T5's), then the course's tokens.
        base = sp.get_piece_size() - inside  # ids below this are ordinary SentencePiece pieces
        sentinels = [f"<extra_id_{i}>" for i in reversed(range(num_sentinels))]
        course = [f"<loc{k:04d}>" for k in range(self.num_loc)]
        course += [f"<seg{k:03d}>" for k in range(self.num_seg)]
        course += list(self.mode_tokens)
        self.num_sentinels = int(num_sentinels)
        self.num_text_tokens = base
        self.original_vocab_size: int = base + self.num_sentinels
        """Ids ``0 … original_vocab_size-1`` mean exactly what they mean to the T5 checkpoint."""
        self._appended = sentinels + course
        self._first_appended = base
        self._sentinel_start = base
        self._loc_start = self.original_vocab_size
        self._seg_start = self._loc_start + self.num_loc
        self._mode_start = self._seg_start + self.num_seg
        self.vocab_size = base + len(self._appended)
        self.padded_vocab_size = _round_up(self.vocab_size, 128)
        self._special_to_id = {name: base + i for i, name in enumerate(self._appended)}
        for i, name in self._control_names.items():
            self._special_to_id.setdefault(name, i)
        alternatives = sorted(self._special_to_id, key=len, reverse=True)  # <extra_id_10> before _1
        self._special_re = re.compile("|".join(re.escape(a) for a in alternatives))

    # ---- the sentinels sit below the course's tokens, not at the top ------------------------
    def sentinel_id(self, i: int) -> int:
        """Id of ``<extra_id_i>``: ``original_vocab_size - 1 - i`` (T5's: ``<extra_id_0>`` = 32,099)."""
        if not 0 <= i < self.num_sentinels:
            last = f"<extra_id_{self.num_sentinels - 1}>"
            raise ValueError(f"sentinel {i} out of range: there are <extra_id_0> … {last}")
        return self.original_vocab_size - 1 - int(i)

    @property
    def sentinel_ids(self) -> list[int]:
        """Ids of ``<extra_id_0>``, ``<extra_id_1>``, …: ``sentinel_ids[i] == sentinel_id(i)``."""
        return [self.original_vocab_size - 1 - i for i in range(self.num_sentinels)]

    def is_sentinel(self, i: int) -> bool:
        return self._sentinel_start <= int(i) < self.original_vocab_size

    def is_new(self, i: int) -> bool:
        """True for the course's tokens the T5 checkpoint has never seen (``<loc>``, ``<seg>``, modes)."""
        return self.original_vocab_size <= int(i) < self.vocab_size

    @property
    def new_ids(self) -> range:
        """Ids of the course's tokens added after T5's (their embedding rows start untrained)."""
        return range(self.original_vocab_size, self.vocab_size)

    # ---- identity, saving, loading ---------------------------------------------------------
    def _layout(self) -> dict[str, Any]:
        return {**super()._layout(), "sentinels": "t5"}  # part of the fingerprint

    def __repr__(self) -> str:
        return (
            f"T5CourseTokenizer(vocab_size={self.vocab_size}, padded_vocab_size={self.padded_vocab_size}, "
            f"t5_ids={self.original_vocab_size} (pieces {self.num_text_tokens} + sentinels "
            f"{self.num_sentinels}), loc={self.num_loc}, seg={self.num_seg}, modes={list(self.mode_tokens)})"
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``spiece.model`` and ``tokenizer_config.json`` (format ``pali3_edu.t5_tokenizer/1``).

        Load the folder with :meth:`T5CourseTokenizer.load` or :func:`load_t5_tokenizer`.
        """
        directory = super().save(directory)
        config_path = directory / CONFIG_FILE
        config = json.loads(config_path.read_text())
        config["format"] = T5_FORMAT
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike, **layout: Any) -> T5CourseTokenizer:
        """Load a folder written by :meth:`save`, a T5 checkpoint folder (with ``spiece.model``), or
        a SentencePiece ``.model`` file. ``layout`` keywords as in the constructor."""
        path = Path(path)
        if path.is_dir():
            if not (path / MODEL_FILE).exists():
                raise FileNotFoundError(
                    f"{path} has no {MODEL_FILE}: pass a T5 / Flan-T5 / UL2 checkpoint folder (they "
                    "ship T5's SentencePiece model as spiece.model) or the .model file itself."
                )
            config: Any = {}
            config_path = path / CONFIG_FILE
            if config_path.exists():
                try:
                    config = json.loads(config_path.read_text())
                except (ValueError, UnicodeDecodeError):
                    config = {}
            fmt = config.get("format") if isinstance(config, dict) else None
            if fmt == COURSE_FORMAT:
                raise ValueError(
                    f"{path} holds a course-layout tokenizer (sentinels at the top): its ids do not "
                    "match a T5 checkpoint's. Load it with pali3_edu.tokenizer.Tokenizer.load."
                )
            if fmt == T5_FORMAT:  # ours: Tokenizer.load checks vocab_size and fingerprint
                return super().load(path, **layout)
            # A Hugging Face checkpoint folder: its tokenizer_config.json says how many sentinels
            # its tokenizer appends ("extra_ids": 100 for T5, Flan-T5 and UL2).
            path = path / MODEL_FILE
            extra = config.get("extra_ids") if isinstance(config, dict) else None
            if ("num_sentinels" not in layout and isinstance(extra, int)
                    and not isinstance(extra, bool) and extra >= 0 and not _has_sentinels(path)):
                layout["num_sentinels"] = extra
        if not path.exists():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        try:
            return cls(path.read_bytes(), **layout)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def load_t5_tokenizer(name_or_path: str | os.PathLike, **options: Any) -> T5CourseTokenizer:
    """The T5-compatible course tokenizer of a T5 / Flan-T5 / UL2 checkpoint.

    ``name_or_path``: a checkpoint folder with ``spiece.model`` (or a folder from
    :meth:`T5CourseTokenizer.save`), a SentencePiece ``.model`` file, or a Hub name (its
    ``spiece.model`` is fetched; only from the cache when ``HF_HUB_OFFLINE`` is set). Layout
    keywords (``num_loc``, ``num_seg``, ``mode_tokens``, ``num_sentinels``) go to
    :class:`T5CourseTokenizer`; ``cache_dir``, ``revision``, ``token`` to ``hf_hub_download``.
    """
    from pali3_edu.convert.pretrained import resolve_source, unavailable

    hub_keys = ("cache_dir", "revision", "token")
    hub = {k: options.pop(k) for k in hub_keys if k in options}
    source = resolve_source(name_or_path)
    if source.local:
        return T5CourseTokenizer.load(source.name, **options)
    from huggingface_hub import hf_hub_download

    try:
        file = hf_hub_download(source.name, MODEL_FILE, **source.hub_kwargs, **hub)
    except (TypeError, ValueError):  # a wrong argument: not a download problem
        raise
    except Exception as e:  # huggingface_hub's errors differ between versions; all mean "not here"
        raise unavailable(source.name, e) from e
    return T5CourseTokenizer.load(file, **options)
