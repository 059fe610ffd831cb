"""The course tokenizer: SentencePiece for ordinary text + PaLI's special tokens on top.

PaLI-3 reads and writes ordinary words *and* a few families of special tokens:

* ``<loc0000>`` … ``<loc1023>``  box coordinates (1024 bins, y before x), for detection;
* ``<seg000>`` … ``<seg127>``    segmentation codes (a VQ-VAE codebook of 128 entries);
* ``[NLU]`` ``[NLG]`` ``[S2S]``   UL2 mode tokens, prepended to the encoder input of a denoiser;
* ``<extra_id_0>`` … ``<extra_id_99>``  T5/UL2 sentinels that stand for corrupted spans.

A SentencePiece model handles the ordinary text. The special tokens are *appended after* the
SentencePiece vocabulary by the :class:`Tokenizer` wrapper (as Hugging Face's ``T5Tokenizer`` does
with its extra ids), so the same wrapper works on top of *any* SentencePiece ``.model`` file.
Id layout for a SentencePiece model of ``n`` pieces (T5 ids at the bottom)::

    0 <pad>   1 </s> (EOS)   2 <unk>   3 … n-1  SentencePiece pieces
    n … n+1023            <loc0000> … <loc1023>
    n+1024 … n+1151       <seg000> … <seg127>
    n+1152 … n+1154       [NLU] [NLG] [S2S]
    n+1155 … n+1254       <extra_id_99> … <extra_id_0>   (<extra_id_0> is the highest id)

``vocab_size`` = n + 1255; the embedding table has ``padded_vocab_size`` rows (a multiple of 128,
which keeps matrix multiplies fast on GPUs).

Encoding splits the text on the special tokens, encodes the plain parts with SentencePiece and
maps every special token to its single id. The course's own model is trained *whitespace-exact*
(no whitespace clean-up, no per-call dummy prefix), and the wrapper adds the usual SentencePiece
"dummy" space once, at the start of the text; so ``decode(encode(text)) == text`` for every text
made of characters the model knows, special tokens included (``"<loc0001>…<loc0004> circle"``).
Other SentencePiece models (T5's ``spiece.model`` …) normalise whitespace themselves: there the
round trip holds up to that normalisation (runs of spaces, spaces next to special tokens).

The numbers above (1024 location bins, 128 segmentation codes, the mode tokens, 100 sentinels,
the control ids) are defined once in :mod:`pali3_edu.tokens`, which also explains why each is what
it is; this module only lays them out.

Every tokenizer has a :attr:`Tokenizer.fingerprint`, a short hex digest of its SentencePiece model
and its special-token layout. Two tokenizers with the same fingerprint give every text the same
ids; a model checkpoint trained with one tokenizer is only meaningful with a tokenizer of the same
fingerprint (the *number* of ids can agree while the ids mean different things), so training
recipes fold it into their own cache keys.

Quick use::

    tok = course_tokenizer()                      # trained on ShapesWorld text, cached under data/
    ids = tok.encode("detect circle")             # [... , 1]  (ends with EOS)
    tok.decode(ids, skip_special_tokens=True)     # 'detect circle'
    batch = tok.batch_encode(["caption en", "ocr"], max_length=8, padding="max_length")
    batch["input_ids"].shape                      # (2, 8)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from pali3_edu.tokens import (
    EOS_ID,
    IGNORE_INDEX,
    MODE_TOKENS,
    NUM_LOC_BINS,
    NUM_SEG_TOKENS,
    NUM_SENTINELS,
    PAD_ID,
    TASK_PREFIXES,
    UNK_ID,
)

__all__ = [
    "Tokenizer",
    "train_tokenizer",
    "course_tokenizer",
    "course_tokenizer_recipe",
    "MODE_TOKENS",
    "NUM_LOC_TOKENS",
    "NUM_SEG_TOKENS",
    "NUM_SENTINELS",
    "PROMPT_TEXTS",
    "TOKENIZER_VERSION",
]

NUM_LOC_TOKENS = NUM_LOC_BINS  # the older name of pali3_edu.tokens.NUM_LOC_BINS
_MODE_NAMES: tuple[str, ...] = tuple(MODE_TOKENS.values())  # ("[NLU]", "[NLG]", "[S2S]"), id order

MODEL_FILE = "spiece.model"
CONFIG_FILE = "tokenizer_config.json"
_FORMAT = "pali3_edu.tokenizer/1"
# Bump when the training recipe changes in a way the recipe fingerprint cannot see (e.g. a new
# trainer option), so cached course tokenizers are rebuilt.
TOKENIZER_VERSION = "2"

# The task prompts, plus the question stems of ShapesWorld's VQA. They are added to the training
# text so that every prompt word is a whole piece, even if the scene corpus never says
# "caption en". (Any edit here changes the course tokenizer's cache key: see course_tokenizer.)
_VQA = TASK_PREFIXES["vqa"]
PROMPT_TEXTS: tuple[str, ...] = (
    *dict.fromkeys(TASK_PREFIXES.values()),  # each prefix once, in task order
    f"{_VQA} what color is the",
    f"{_VQA} how many shapes are there?",
    f"{_VQA} is there a",
    f"{_VQA} what is written on the",
    f"{_VQA} what shape is",
    "yes",
    "no",
)
_PROMPT_REPEATS = 20  # how often the prompts are repeated in the training text

# Characters every course model knows, even if the corpus never uses them (so any ASCII text
# round-trips instead of turning into <unk>).
_REQUIRED_CHARS = string.ascii_letters + string.digits + string.punctuation + "\n"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _load_sentencepiece(model_proto: bytes) -> spm.SentencePieceProcessor:
    """Parse a SentencePiece model; a damaged one raises ``ValueError`` (never a C++ error later).

    SentencePiece raises ``RuntimeError`` for bytes it cannot parse, but accepts *empty* bytes and
    only fails (with ``RuntimeError`` or ``IndexError``) at the first use, so both are checked here.
    """
    hint = "delete the file, or train and save the tokenizer again"
    if not model_proto:
        raise ValueError(f"not a SentencePiece model: it is empty (0 bytes); {hint}")
    try:
        sp = spm.SentencePieceProcessor(model_proto=model_proto)
        n = sp.get_piece_size()
        sp.encode("b", out_type=str)
    except (RuntimeError, IndexError, OSError) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"not a SentencePiece model, or a damaged one ({detail}); {hint}"
        ) from e
    if n < 1:
        raise ValueError(f"not a SentencePiece model: it has no pieces; {hint}")
    return sp


class Tokenizer:
    """SentencePiece + PaLI special tokens, with T5 ids (pad 0, EOS 1, unk 2).

    Build one with :func:`train_tokenizer`, :func:`course_tokenizer` or :meth:`Tokenizer.load`.
    ``num_loc``, ``num_seg``, ``mode_tokens`` and ``num_sentinels`` choose which special tokens are
    appended (``Tokenizer.load("spiece.model", num_loc=0, num_seg=0, mode_tokens=())`` on T5's
    SentencePiece file gives exactly the 32,100 ids of Hugging Face's ``T5Tokenizer``).
    """

    # T5 convention. An instance built on a SentencePiece model with another layout overrides these.
    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    unk_id: int = UNK_ID

    def __init__(
        self,
        model_proto: bytes,
        *,
        num_loc: int = NUM_LOC_BINS,
        num_seg: int = NUM_SEG_TOKENS,
        mode_tokens: Sequence[str] | Mapping[str, str] = _MODE_NAMES,
        num_sentinels: int = NUM_SENTINELS,
    ) -> None:
        self.sp = _load_sentencepiece(bytes(model_proto))
        self._model_proto = bytes(model_proto)
        self.num_loc, self.num_seg = int(num_loc), int(num_seg)
        self.num_sentinels = int(num_sentinels)
        if isinstance(mode_tokens, Mapping):  # pali3_edu.tokens.MODE_TOKENS: kind -> token
            mode_tokens = tuple(mode_tokens.values())
        self.mode_tokens = tuple(mode_tokens)
        if not (0 <= self.num_loc <= 10_000 and 0 <= self.num_seg <= 1000 and num_sentinels >= 0):
            raise ValueError("need 0 <= num_loc <= 10000 (4 digits) and 0 <= num_seg <= 1000")

        n = self.sp.get_piece_size()
        self.num_text_tokens = n  # ids 0 … n-1 come from SentencePiece

        # Control tokens. A model without pad or EOS (e.g. Llama's) gets them appended.
        extra_control: list[str] = []
        self.unk_id = self.sp.unk_id()
        if self.sp.pad_id() >= 0:
            self.pad_id = self.sp.pad_id()
        else:
            self.pad_id = n + len(extra_control)
            extra_control.append("<pad>")
        if self.sp.eos_id() >= 0:
            self.eos_id = self.sp.eos_id()
        else:
            self.eos_id = n + len(extra_control)
            extra_control.append("</s>")

        # Appended tokens in id order: [pad/EOS if missing], loc, seg, modes, sentinels (99 → 0).
        names: list[str] = list(extra_control)
        names += [f"<loc{k:04d}>" for k in range(self.num_loc)]
        names += [f"<seg{k:03d}>" for k in range(self.num_seg)]
        names += list(self.mode_tokens)
        names += [f"<extra_id_{i}>" for i in reversed(range(self.num_sentinels))]
        self._appended = names
        self._first_appended = n
        self._loc_start = n + len(extra_control)
        self._seg_start = self._loc_start + self.num_loc
        self._mode_start = self._seg_start + self.num_seg
        self._sentinel_start = self._mode_start + len(self.mode_tokens)
        self.vocab_size: int = n + len(names)
        self.padded_vocab_size: int = _round_up(self.vocab_size, 128)

        # Every token the text can name directly: the appended ones and the three control pieces.
        self._control_names = {
            self.pad_id: self._piece(self.pad_id),
            self.eos_id: self._piece(self.eos_id),
            self.unk_id: self._piece(self.unk_id),
        }
        self._special_to_id: dict[str, int] = {name: n + i for i, name in enumerate(names)}
        for i, name in self._control_names.items():
            self._special_to_id.setdefault(name, i)
        alternatives = sorted(self._special_to_id, key=len, reverse=True)
        pattern = "|".join(re.escape(a) for a in alternatives)  # longest first: <extra_id_10> > _1
        self._special_re = re.compile(pattern) if alternatives else None

        # Whitespace handling: is the SentencePiece model whitespace-exact (the course's), or does
        # it add its own dummy prefix to every call (T5's and most others)?
        first = self.sp.encode("b", out_type=str)
        self._sp_adds_dummy = bool(first) and first[0].startswith("\u2581")

    # ------------------------------------------------------------------ ids and names
    def _piece(self, i: int) -> str:
        if i < self.num_text_tokens:
            return self.sp.id_to_piece(i)
        return self._appended[i - self._first_appended]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, padded_vocab_size={self.padded_vocab_size}, "
            f"sentencepiece_pieces={self.num_text_tokens}, loc={self.num_loc}, seg={self.num_seg}, "
            f"modes={list(self.mode_tokens)}, sentinels={self.num_sentinels})"
        )

    def _check_id(self, i: int) -> int:
        i = int(i)
        if i == IGNORE_INDEX:
            raise ValueError(
                f"id {IGNORE_INDEX} is the 'ignore' label value (IGNORE_INDEX), not a token: "
                "replace it before decoding, "
                f"e.g. labels.masked_fill(labels == {IGNORE_INDEX}, tok.pad_id)"
            )
        if not 0 <= i < self.vocab_size:
            raise ValueError(
                f"token id {i} is out of range: valid ids are 0 … {self.vocab_size - 1}"
            )
        return i

    def token_to_id(self, token: str) -> int:
        """The id of one token: a special one (``"<loc0042>"``, ``"[NLU]"``) or a piece."""
        if token in self._special_to_id:
            return self._special_to_id[token]
        i = self.sp.piece_to_id(token)
        if i == self.unk_id and token != self._piece(self.unk_id):
            raise KeyError(f"{token!r} is not a token of this vocabulary (use encode() for text)")
        return i

    def id_to_token(self, i: int) -> str:
        """The name of one id (a SentencePiece piece such as ``'▁red'`` or a special token)."""
        return self._piece(self._check_id(i))

    def loc_id(self, k: int) -> int:
        """Id of ``<locKKKK>``, the k-th of the location bins (0 … num_loc-1)."""
        if not 0 <= k < self.num_loc:
            last = f"<loc{self.num_loc - 1:04d}>"
            raise ValueError(f"loc bin {k} out of range: this tokenizer has <loc0000> … {last}")
        return self._loc_start + int(k)

    def seg_id(self, k: int) -> int:
        """Id of ``<segKKK>``, the k-th segmentation code (0 … num_seg-1)."""
        if not 0 <= k < self.num_seg:
            last = f"<seg{self.num_seg - 1:03d}>"
            raise ValueError(f"seg code {k} out of range: this tokenizer has <seg000> … {last}")
        return self._seg_start + int(k)

    def mode_id(self, mode: str) -> int:
        """Id of a UL2 mode token: ``"[NLU]"``, ``"[NLG]"`` or ``"[S2S]"`` (brackets optional)."""
        name = mode if mode.startswith("[") else f"[{mode}]"
        if name not in self.mode_tokens:
            raise ValueError(f"unknown UL2 mode {mode!r}: choose one of {list(self.mode_tokens)}")
        return self._mode_start + self.mode_tokens.index(name)

    def sentinel_id(self, i: int) -> int:
        """Id of ``<extra_id_i>``. ``<extra_id_0>`` is the highest id and they count down (T5)."""
        if not 0 <= i < self.num_sentinels:
            last = f"<extra_id_{self.num_sentinels - 1}>"
            raise ValueError(f"sentinel {i} out of range: there are <extra_id_0> … {last}")
        return self.vocab_size - 1 - int(i)

    @property
    def loc_ids(self) -> range:
        """Ids of ``<loc0000>`` … ``<loc1023>`` in bin order."""
        return range(self._loc_start, self._seg_start)

    @property
    def seg_ids(self) -> range:
        """Ids of ``<seg000>`` … ``<seg127>`` in code order."""
        return range(self._seg_start, self._mode_start)

    @property
    def mode_ids(self) -> dict[str, int]:
        """``{"[NLU]": id, "[NLG]": id, "[S2S]": id}``."""
        return {m: self._mode_start + j for j, m in enumerate(self.mode_tokens)}

    @property
    def sentinel_ids(self) -> list[int]:
        """Ids of ``<extra_id_0>``, ``<extra_id_1>``, …: ``sentinel_ids[i] == sentinel_id(i)``."""
        return [self.vocab_size - 1 - i for i in range(self.num_sentinels)]

    @property
    def special_tokens(self) -> list[str]:
        """Every token that is not ordinary text: pad, EOS, unk and the appended tokens."""
        return [self._piece(i) for i in sorted(self._control_names)] + list(self._appended)

    def is_special(self, i: int) -> bool:
        """True for pad, EOS, unk and every appended token (loc, seg, mode, sentinel)."""
        i = int(i)
        return i in self._control_names or self._first_appended <= i < self.vocab_size

    def is_sentinel(self, i: int) -> bool:
        return self._sentinel_start <= int(i) < self.vocab_size

    def is_loc(self, i: int) -> bool:
        return self._loc_start <= int(i) < self._seg_start

    def is_seg(self, i: int) -> bool:
        return self._seg_start <= int(i) < self._mode_start

    # ------------------------------------------------------------------ encoding
    def _split(self, text: str) -> list[str | int]:
        """Split text into plain strings and special-token ids, in order."""
        if self._special_re is None:
            return [text] if text else []
        parts: list[str | int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            parts.append(self._special_to_id[m.group()])
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        return parts

    def _plain_parts(self, text: str) -> list[str | int]:
        parts = self._split(text)
        if not self._sp_adds_dummy and parts and isinstance(parts[0], str):
            parts[0] = " " + parts[0]  # dummy prefix: "red" at the start reads like " red" mid-text
        return parts

    def _encode_many(self, texts: Sequence[str], add_eos: bool) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("expected a list of strings; for one text use encode(text)")
        split = []
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"expected str, got {type(t).__name__}")
            split.append(self._plain_parts(t))
        plain = [p for parts in split for p in parts if isinstance(p, str)]
        encoded = iter(self.sp.encode(plain) if plain else [])  # one call for the whole batch
        out = []
        for parts in split:
            ids: list[int] = []
            for p in parts:
                if isinstance(p, str):
                    ids.extend(next(encoded))
                else:
                    ids.append(p)
            if add_eos:
                ids.append(self.eos_id)
            out.append(ids)
        return out

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Text → ids. Special tokens written in the text (``"<loc0042>"``) become one id each.

        EOS (id 1) is appended unless ``add_eos=False``.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"encode() takes one str, got {type(text).__name__}; use batch_encode for lists"
            )
        return self._encode_many([text], add_eos)[0]

    def batch_encode(
        self,
        texts: Sequence[str] | str,
        max_length: int | None = None,
        padding: str | bool = "longest",
        truncation: bool = True,
        add_eos: bool = True,
        pad_id: int | None = None,
        return_tensors: str | None = "pt",
    ) -> dict[str, Any]:
        """Encode a batch and pad it into a rectangle.

        Args:
            texts: B strings.
            max_length: longest allowed sequence, EOS included (needed by ``"max_length"`` padding).
            padding: ``"longest"`` (pad to the longest in the batch), ``"max_length"`` (pad to
                ``max_length``) or ``False`` (no padding; then ``return_tensors`` must be ``None``
                unless all lengths agree).
            truncation: cut sequences longer than ``max_length``; the last kept token is EOS when
                ``add_eos``. With ``truncation=False`` a too-long text raises ``ValueError``.
            pad_id: value used for padding; default ``self.pad_id``. SigLIP's text tower pads with
                EOS ("sticky EOS", ``pad_id=tok.eos_id``) so that the last position is always EOS.
            return_tensors: ``"pt"`` for ``torch.long`` tensors, ``None`` for lists of lists.

        Returns:
            ``{"input_ids": (B, T), "attention_mask": (B, T)}``; the mask is 1 on real tokens
            (EOS included) and 0 on padding, whatever ``pad_id`` is.
        """
        if isinstance(texts, str):
            texts = [texts]
        if padding is True:
            padding = "longest"
        if padding not in ("longest", "max_length", False, None):
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        pad = self.pad_id if pad_id is None else int(pad_id)

        seqs = self._encode_many(list(texts), add_eos)
        if max_length is not None:
            for b, ids in enumerate(seqs):
                if len(ids) <= max_length:
                    continue
                if not truncation:
                    raise ValueError(
                        f"text {b} is {len(ids)} tokens long but max_length is {max_length}: "
                        f"shorten it, raise max_length, or pass truncation=True"
                    )
                seqs[b] = ids[: max_length - 1] + [self.eos_id] if add_eos else ids[:max_length]

        lengths = [len(s) for s in seqs]
        if padding == "max_length":
            width = max_length
        elif padding == "longest":
            width = max(lengths, default=0)
        else:
            width = None
        if width is not None:
            masks = [[1] * n + [0] * (width - n) for n in lengths]
            seqs = [s + [pad] * (width - len(s)) for s in seqs]
        else:
            masks = [[1] * n for n in lengths]

        if return_tensors == "pt":
            if len(set(len(s) for s in seqs)) > 1:
                raise ValueError(
                    "sequences have different lengths: use padding='longest' or return_tensors=None"
                )
            t = len(seqs[0]) if seqs else 0
            return {
                "input_ids": torch.tensor(seqs, dtype=torch.long).reshape(len(seqs), t),
                "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(len(seqs), t),
            }
        return {"input_ids": seqs, "attention_mask": masks}

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Ids → text. Decodes every id (it does not stop at EOS; :meth:`batch_decode` does).

        ``skip_special_tokens=True`` drops the control tokens pad and EOS only: loc, seg, mode and
        sentinel tokens carry meaning (a box, a mask, a span) and are always written out, and an
        unknown character is written ``<unk>``.
        Ids of the embedding table's padding rows (``vocab_size … padded_vocab_size-1``), which an
        untrained model may predict, are written ``<unk>``; ids beyond the table, or the label
        value ``IGNORE_INDEX`` (-100), raise ``ValueError``.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(
                    f"decode() takes one sequence (1-D), got shape {tuple(ids.shape)}; "
                    "use batch_decode"
                )
            ids = ids.tolist()
        pieces: list[str] = []
        run: list[int] = []  # consecutive SentencePiece ids, decoded together
        seen_text = False  # has anything been written that is not pad/EOS?

        def flush() -> None:
            nonlocal seen_text
            if not run:
                return
            text = self.sp.decode(run)
            if self._sp_adds_dummy:
                # SentencePiece removed the leading space of this run; put it back mid-text.
                if seen_text and self.sp.id_to_piece(run[0]).startswith("\u2581"):
                    text = " " + text
            elif not seen_text and text.startswith(" "):
                text = text[1:]  # the dummy prefix added by encode()
            pieces.append(text)
            seen_text = True
            run.clear()

        for i in ids:
            if self.vocab_size <= int(i) < self.padded_vocab_size:
                # A padding row of the embedding table: no token, but a model in training can
                # still predict it. Write it as <unk> rather than fail mid-evaluation.
                flush()
                pieces.append("<unk>")
                seen_text = True
                continue
            i = self._check_id(i)
            if i == self.pad_id or i == self.eos_id:
                flush()
                if not skip_special_tokens:
                    pieces.append(self._control_names[i])
            elif i < self.num_text_tokens and i != self.unk_id:
                run.append(i)
            else:
                flush()
                pieces.append(self._piece(i))
                seen_text = True
        flush()
        return "".join(pieces)

    def batch_decode(
        self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        """Decode ``(B, T)`` ids; each row is cut at its first EOS (EOS itself not included)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 2:
                raise ValueError(
                    f"batch_decode() takes (batch, length) ids, got shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        out = []
        for row in ids:
            row = list(row)
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            out.append(self.decode(row, skip_special_tokens=skip_special_tokens))
        return out

    # ------------------------------------------------------------------ saving and loading
    @staticmethod
    def _default_layout() -> dict[str, Any]:
        """The course's special-token layout (what ``Tokenizer(proto)`` appends by default)."""
        return {
            "num_loc": NUM_LOC_BINS,
            "num_seg": NUM_SEG_TOKENS,
            "mode_tokens": list(_MODE_NAMES),
            "num_sentinels": NUM_SENTINELS,
        }

    def _layout(self) -> dict[str, Any]:
        return {
            "num_loc": self.num_loc,
            "num_seg": self.num_seg,
            "mode_tokens": list(self.mode_tokens),
            "num_sentinels": self.num_sentinels,
        }

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying this tokenizer: SHA-256 of the model bytes + the layout.

        Equal fingerprints mean the same text gives the same ids. Fold it into the cache key of
        anything trained on token ids (a checkpoint is meaningless with another tokenizer, even
        one of the same vocabulary size).
        """
        layout = json.dumps({"format": _FORMAT, **self._layout()}, sort_keys=True)
        digest = hashlib.sha256(self._model_proto)
        digest.update(b"\0" + layout.encode())
        return digest.hexdigest()[:16]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``spiece.model`` and ``tokenizer_config.json`` into ``directory``; return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_bytes(self._model_proto)
        config = {
            "format": _FORMAT,
            **self._layout(),
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike, **layout: Any) -> Tokenizer:
        """Load a directory written by :meth:`save`, or any SentencePiece ``.model`` file.

        For a bare ``.model`` file the course's special tokens are appended; ``layout`` keywords
        (``num_loc``, ``num_seg``, ``mode_tokens``, ``num_sentinels``) change that.
        """
        path = Path(path)
        if path.is_dir():
            model = path / MODEL_FILE
            if not model.exists():
                raise FileNotFoundError(
                    f"{path} has no {MODEL_FILE}: is it a directory written by Tokenizer.save()?"
                )
            config_path = path / CONFIG_FILE
            config: dict[str, Any] = {}
            if config_path.exists():
                try:
                    config = json.loads(config_path.read_text())
                except (ValueError, UnicodeDecodeError) as e:
                    raise ValueError(f"{config_path} is not valid JSON ({e})") from e
                if not isinstance(config, dict):
                    raise ValueError(f"{config_path} should hold a JSON object")
            keys = ("num_loc", "num_seg", "mode_tokens", "num_sentinels")
            saved = {k: config[k] for k in keys if k in config}
            try:
                tok = cls(model.read_bytes(), **{**saved, **layout})
            except ValueError as e:
                raise ValueError(f"{model}: {e}") from e
            if "vocab_size" in config and not layout and config["vocab_size"] != tok.vocab_size:
                raise ValueError(
                    f"{config_path} says vocab_size {config['vocab_size']} "
                    f"but the files give {tok.vocab_size}"
                )
            if "fingerprint" in config and not layout and config["fingerprint"] != tok.fingerprint:
                raise ValueError(
                    f"{config_path} says fingerprint {config['fingerprint']} but the files give "
                    f"{tok.fingerprint}: {MODEL_FILE} was changed after saving"
                )
            return tok
        if not path.exists():
            raise FileNotFoundError(
                f"no tokenizer at {path}: pass a directory from Tokenizer.save() "
                "or a SentencePiece .model file"
            )
        try:
            return cls(path.read_bytes(), **layout)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Tokenizer)
            and self._model_proto == other._model_proto
            and self._layout() == other._layout()
        )

    def __hash__(self) -> int:
        return hash((self._model_proto, self.mode_tokens, self.vocab_size))


# ---------------------------------------------------------------------- training
def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    model_type: str = "bpe",
    byte_fallback: bool = False,
    character_coverage: float = 1.0,
    required_chars: str = _REQUIRED_CHARS,
    seed: int = 0,
    **layout: Any,
) -> Tokenizer:
    """Train a SentencePiece model on ``texts`` and wrap it with the special tokens.

    ``vocab_size`` counts SentencePiece pieces only (pad, EOS, unk included); it is an upper
    bound (``hard_vocab_limit=False``): a small corpus may give fewer. The model is trained
    whitespace-exact (identity normalisation, no whitespace clean-up) so that decoding gives the
    text back; ``byte_fallback=True`` adds 256 byte pieces so that *any* character round-trips
    (instead of becoming ``<unk>``). Training is single-threaded and seeded: the same texts give
    the same model. ``layout`` is passed on to :class:`Tokenizer`.

    ``model_type="bpe"`` (merge the most frequent pair, again and again) is the default: on the
    small, repetitive ShapesWorld corpus SentencePiece's ``"unigram"`` trainer stops at about 220
    pieces and splits common words ("▁a n s w er"), while BPE fills all 512 pieces with whole
    words ("▁answer", 3.8 characters per token against 2.9).
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    texts = [" " + t for t in texts if t and t.strip()]  # the dummy prefix encode() adds
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    min_size = 3 + len(set(required_chars) | set("".join(texts))) + (256 if byte_fallback else 0)
    if vocab_size < min(min_size, 3 + 256 + 100):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the characters alone need ~{min_size} pieces"
        )
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        required_chars=required_chars,
        normalization_rule_name="identity",
        add_dummy_prefix=False,  # the wrapper adds it once per text, not once per segment
        remove_extra_whitespaces=False,
        split_digits=True,
        num_threads=1,
        max_sentence_length=1 << 16,
        minloglevel=2,  # quiet
    )
    return Tokenizer(model.getvalue(), **layout)


# Digest of the ShapesWorld text per (generator version, num_scenes), so that only the first
# course_tokenizer() call of a process pays for generating the corpus when the cache is warm.
_SCENE_TEXT_DIGESTS: dict[tuple[str, int], str] = {}
_COURSE_TRAINER = {  # train_tokenizer's settings for the course tokenizer (besides vocab/type)
    "byte_fallback": False,
    "character_coverage": 1.0,
    "required_chars": _REQUIRED_CHARS,
    "seed": 0,
}


def _texts_digest(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()


def course_tokenizer_recipe(
    vocab_size: int = 512, num_scenes: int = 3000, model_type: str = "bpe"
) -> dict[str, Any]:
    """Everything that decides what :func:`course_tokenizer` trains, as a JSON-able dict.

    The training text (a SHA-256 of the ShapesWorld text, and the prompts themselves), the
    trainer's settings, the special-token layout, ``TOKENIZER_VERSION``, the ShapesWorld
    ``GENERATOR_VERSION`` and the SentencePiece version. ``recipe["fingerprint"]`` is a digest of
    all the rest; it names the cache folder, so changing any of it (say, editing a prompt) trains a
    new tokenizer instead of silently reusing an old one.
    """
    from pali3_edu.data import shapesworld  # imported here: the Tokenizer class does not need it

    memo = (str(shapesworld.GENERATOR_VERSION), int(num_scenes))
    if memo not in _SCENE_TEXT_DIGESTS:
        scene_texts = shapesworld.text_corpus(num_scenes, split="train")
        _SCENE_TEXT_DIGESTS[memo] = _texts_digest(scene_texts)
    layout = Tokenizer._default_layout()
    recipe: dict[str, Any] = {
        "tokenizer_version": TOKENIZER_VERSION,
        "format": _FORMAT,
        "shapesworld_generator_version": str(shapesworld.GENERATOR_VERSION),
        "num_scenes": int(num_scenes),
        "scene_text_sha256": _SCENE_TEXT_DIGESTS[memo],
        "prompts": list(PROMPT_TEXTS),
        "prompt_repeats": _PROMPT_REPEATS,
        "vocab_size": int(vocab_size),
        "model_type": model_type,
        "trainer": dict(_COURSE_TRAINER),
        "layout": layout,
        "control_ids": {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID},
        "sentencepiece_version": spm.__version__,
    }
    blob = json.dumps(recipe, sort_keys=True, ensure_ascii=True).encode()
    recipe["fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]
    return recipe


def course_tokenizer(
    vocab_size: int = 512, num_scenes: int = 3000, model_type: str = "bpe"
) -> Tokenizer:
    """The course's tokenizer: trained on ShapesWorld text + the task prompts, cached in ``data/``.

    The cache folder is named by the fingerprint of :func:`course_tokenizer_recipe`, so a change
    to the world, the prompts or the recipe trains a fresh one (a couple of seconds on a laptop).
    The folder is verified (SHA-256 of every file) before it is read: a damaged copy (truncated,
    emptied or overwritten ``spiece.model``) is rebuilt with a printed message. Several processes
    may call this at once (notebooks run in parallel): one trains, the others wait and read it.
    """
    from pali3_edu.cache import build_or_load_dir, read_manifest
    from pali3_edu.data import shapesworld
    from pali3_edu.utils import data_dir

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    recipe = course_tokenizer_recipe(vocab_size, num_scenes, model_type)
    fingerprint = recipe["fingerprint"]
    key = (
        f"shapesworld-{shapesworld.GENERATOR_VERSION}_scenes{num_scenes}"
        f"_{model_type}{vocab_size}_{fingerprint}"
    )
    folder = data_dir("tokenizer") / re.sub(r"[^A-Za-z0-9._-]", "_", key)

    def build(tmp: Path) -> None:
        texts = list(shapesworld.text_corpus(num_scenes, split="train"))
        if _texts_digest(texts) != recipe["scene_text_sha256"]:
            raise RuntimeError(
                "the ShapesWorld text changed while the tokenizer was being built "
                "(edited code in a running session?): restart and run again"
            )
        texts += list(PROMPT_TEXTS) * _PROMPT_REPEATS
        tok = train_tokenizer(
            texts, vocab_size=vocab_size, model_type=model_type, **_COURSE_TRAINER
        )
        tok.save(tmp)

    meta = {"recipe_fingerprint": fingerprint, "recipe": recipe}
    name = f"course tokenizer ({model_type}, {vocab_size} pieces)"
    for attempt in range(2):
        build_or_load_dir(folder, build, name=name, rebuild=attempt > 0, meta=meta)
        manifest = read_manifest(folder) or {}
        stored = (manifest.get("meta") or {}).get("recipe_fingerprint")
        try:
            if stored != fingerprint:
                raise ValueError(f"it was built from recipe {stored}, not {fingerprint}")
            return Tokenizer.load(folder)
        except (ValueError, OSError) as e:
            if attempt:
                raise
            print(f"The cached {name} in {folder} cannot be used ({e}); rebuilding it.",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")  # pragma: no cover
