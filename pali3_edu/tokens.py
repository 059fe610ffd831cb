"""The token facts every part of the course agrees on, written down once.

The tokenizer, the task formats, the UL2 denoisers, the encoder-decoder's loss and the benchmarks
all depend on a handful of numbers and strings. If two files wrote them separately they could
drift apart silently (a model trained with one id layout and evaluated with another produces
nonsense without any error), so they live here and everything else imports them.

**Ignored labels: ``IGNORE_INDEX = -100``.** Target sequences in a batch have different lengths,
so the ``labels`` tensor is padded. The padding must not count in the loss, and
``torch.nn.functional.cross_entropy(..., ignore_index=-100)`` skips every position whose label is
-100 (it is also PyTorch's and Hugging Face's default). A negative number can never be a real
token id, so it cannot be mistaken for one; the flip side is that it must be replaced (by the pad
id) before labels are fed to an embedding table or decoded to text.

**Control ids: ``PAD_ID = 0``, ``EOS_ID = 1``, ``UNK_ID = 2``** (T5's layout, kept so that T5/UL2
checkpoints load without remapping). EOS ends every sequence; UNK stands for a character the
SentencePiece model has never seen. Pad does two jobs: it fills the unused end of a batch row
(masked out by the attention mask and, in the labels, replaced by ``IGNORE_INDEX``), and it is the
*decoder start token*: the decoder's first input, before it has written anything, is id 0. T5
chose this so that no extra "BOS" token is needed: the shifted-right labels ``[0, y0, y1, …]`` are
the decoder inputs for predicting ``[y0, y1, y2, …]``.

**UL2 mode tokens: ``MODE_TOKENS = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}``.** UL2 trains one
model on three kinds of denoising (regular span corruption, extreme span corruption, sequential
prefix language modelling) and prepends this token to the encoder input so the model knows which
game it is playing. The dict order is also the order of their ids.

**Special-token counts.** After the SentencePiece pieces the tokenizer appends, in id order:
``NUM_LOC_BINS = 1024`` location tokens ``<loc0000>`` … ``<loc1023>``, ``NUM_SEG_TOKENS = 128``
segmentation codes ``<seg000>`` … ``<seg127>``, the three mode tokens, and ``NUM_SENTINELS = 100``
sentinels ``<extra_id_99>`` … ``<extra_id_0>``.

**Why the sentinels count down from the highest id.** T5 put ``<extra_id_0>`` at the very top of
the vocabulary (``vocab_size - 1``), ``<extra_id_1>`` just below, and so on. The first span of a
corrupted text is always ``<extra_id_0>``, so its id is the same whatever the size of the rest of
the vocabulary, and ``sentinel_id(i) = vocab_size - 1 - i`` needs no table. Checkpoints trained
this way only work with a tokenizer that keeps the convention.

**Boxes as location tokens.** A box is written as four tokens in the order ``y0 x0 y1 x1`` (top,
left, bottom, right: rows before columns, the way image arrays are indexed), each coordinate
normalised to [0, 1] by the image height or width. ``[0, 1]`` is cut into ``NUM_LOC_BINS`` bins:
a value ``v`` becomes bin ``round(v * 1023)`` (:func:`coord_to_bin`) and bin ``b`` decodes to
``b / 1023`` (:func:`bin_to_coord`). Dividing by ``NUM_LOC_BINS - 1`` makes both edges exact (0 is
bin 0, 1 is bin 1023). Rounding to the *nearest* bin (not truncating with ``int``) keeps the
round-trip error at most half a bin, ``0.5 / 1023``, and decoding a bin and encoding it again
gives the same bin. Python's ``round`` sends an exact tie ``k + 0.5`` to the even neighbour (0.5
→ 511.5 → bin 512); ties are rare and either neighbour is half a bin away, so this does not
matter for accuracy, but it is the rule the reference implementation and its tests use.

**Task prefixes: ``TASK_PREFIXES``.** One model does every task; the only thing that tells it
which one is the start of the encoder's text, e.g. ``caption en`` or ``detect``. Referring
expressions use the ``detect`` prefix too (``detect red circle`` asks for the box of one named
object), so ``refer`` and ``detect`` share it.
"""

from __future__ import annotations

__all__ = [
    "IGNORE_INDEX",
    "PAD_ID",
    "EOS_ID",
    "UNK_ID",
    "DECODER_START_ID",
    "MODE_TOKENS",
    "NUM_LOC_BINS",
    "NUM_SEG_TOKENS",
    "NUM_SENTINELS",
    "TASK_PREFIXES",
    "loc_token",
    "coord_to_bin",
    "bin_to_coord",
]

IGNORE_INDEX: int = -100
"""Label value the loss skips (the padding of the targets). Never a token id."""

PAD_ID: int = 0
"""Padding id; also the decoder's start token (T5)."""
EOS_ID: int = 1
"""End of sequence."""
UNK_ID: int = 2
"""Unknown character."""
DECODER_START_ID: int = PAD_ID
"""The decoder's first input is the pad id (T5 needs no separate BOS token)."""

MODE_TOKENS: dict[str, str] = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
"""UL2 denoiser kind → the mode token prepended to its encoder input (dict order = id order)."""

NUM_LOC_BINS: int = 1024
"""Location tokens ``<loc0000>`` … ``<loc1023>``: one bin each of [0, 1]."""
NUM_SEG_TOKENS: int = 128
"""Segmentation codes ``<seg000>`` … ``<seg127>`` (a VQ-VAE codebook of 128 entries)."""
NUM_SENTINELS: int = 100
"""T5/UL2 sentinels ``<extra_id_0>`` … ``<extra_id_99>``; ``<extra_id_0>`` is the highest id."""

TASK_PREFIXES: dict[str, str] = {
    "caption": "caption en",
    "vqa": "answer en",
    "ocr": "ocr",
    "detect": "detect",
    "refer": "detect",
}
"""Task → the prompt that starts the encoder text (``vqa`` and ``detect``/``refer`` add more)."""


def loc_token(bin_index: int) -> str:
    """``17`` → ``"<loc0017>"`` (four digits, zero-padded)."""
    if not 0 <= int(bin_index) < NUM_LOC_BINS:
        raise ValueError(f"location bin {bin_index} out of range: bins are 0 … {NUM_LOC_BINS - 1}")
    return f"<loc{int(bin_index):04d}>"


def coord_to_bin(v: float) -> int:
    """A coordinate in [0, 1] → its location bin, ``round(v * 1023)`` (nearest bin)."""
    return round(v * (NUM_LOC_BINS - 1))


def bin_to_coord(bin_index: int) -> float:
    """A location bin → the coordinate it stands for, ``bin / 1023`` (0 → 0.0, 1023 → 1.0)."""
    return bin_index / (NUM_LOC_BINS - 1)
