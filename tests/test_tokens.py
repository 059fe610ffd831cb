"""The token facts in ``pali3_edu.tokens`` and the modules that must agree with them."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pali3_edu import tokenizer, tokens, ul2
from pali3_edu.data import tasks
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
    bin_to_coord,
    coord_to_bin,
    loc_token,
)


def test_the_facts():
    assert IGNORE_INDEX == -100
    assert (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2) and tokens.DECODER_START_ID == PAD_ID
    assert MODE_TOKENS == {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
    assert list(MODE_TOKENS) == ["R", "X", "S"]  # the order of their ids
    assert (NUM_LOC_BINS, NUM_SEG_TOKENS, NUM_SENTINELS) == (1024, 128, 100)
    assert TASK_PREFIXES == {"caption": "caption en", "vqa": "answer en", "ocr": "ocr",
                             "detect": "detect", "refer": "detect"}


def test_ignore_index_is_what_the_loss_skips():
    """PyTorch's cross-entropy skips -100 by default: padded label positions cost nothing."""
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, IGNORE_INDEX, 5, IGNORE_INDEX])
    assert torch.nn.CrossEntropyLoss().ignore_index == IGNORE_INDEX
    assert torch.allclose(F.cross_entropy(logits, labels), F.cross_entropy(logits[[0, 2]], labels[[0, 2]]))


def test_other_modules_use_these_facts():
    from pali3_edu import encdec  # owned elsewhere; it must agree (ideally import it from tokens)

    assert encdec.IGNORE_INDEX == IGNORE_INDEX
    assert ul2.MODE_TOKENS is MODE_TOKENS and ul2.IGNORE_INDEX == IGNORE_INDEX
    assert tasks.NUM_LOC_BINS == NUM_LOC_BINS and tasks.PREFIXES is TASK_PREFIXES
    assert tokenizer.NUM_LOC_TOKENS == NUM_LOC_BINS and tokenizer.MODE_TOKENS is MODE_TOKENS
    assert tokenizer.NUM_SEG_TOKENS == NUM_SEG_TOKENS
    assert tokenizer.NUM_SENTINELS == NUM_SENTINELS
    assert "segment" not in " ".join(tokenizer.PROMPT_TEXTS)  # not a task of this course
    for prefix in TASK_PREFIXES.values():
        assert prefix in tokenizer.PROMPT_TEXTS


def test_tokenizer_layout_follows_the_facts():
    texts = ["a red circle left of a blue square", "how many shapes are there? 3"] * 40
    tok = tokenizer.train_tokenizer(texts + list(tokenizer.PROMPT_TEXTS), vocab_size=120)
    n = tok.num_text_tokens
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (PAD_ID, EOS_ID, UNK_ID)
    assert tok.vocab_size == n + NUM_LOC_BINS + NUM_SEG_TOKENS + len(MODE_TOKENS) + NUM_SENTINELS
    assert tok.mode_tokens == tuple(MODE_TOKENS.values())
    assert [tok.mode_id(m) for m in MODE_TOKENS.values()] == sorted(tok.mode_ids.values())
    assert tok.sentinel_id(0) == tok.vocab_size - 1  # sentinels count down from the top
    assert tok.sentinel_id(NUM_SENTINELS - 1) == tok.vocab_size - NUM_SENTINELS
    assert tok.encode(loc_token(NUM_LOC_BINS - 1), add_eos=False) == [tok.loc_id(NUM_LOC_BINS - 1)]
    with pytest.raises(ValueError, match="IGNORE_INDEX"):
        tok.decode([IGNORE_INDEX])


@pytest.mark.parametrize("v, b", [(0.0, 0), (1.0, 1023), (0.5, 512), (0.25, 256), (0.75, 767),
                                  (0.4999 / 1023, 0), (0.5001 / 1023, 1)])
def test_coord_to_bin_rounds_to_the_nearest_bin(v, b):
    assert coord_to_bin(v) == b  # 0.5 * 1023 = 511.5 is a tie: round() picks the even 512


def test_bins_round_trip_within_half_a_bin():
    rng = random.Random(0)
    for v in [0.0, 1.0] + [rng.random() for _ in range(2000)]:
        b = coord_to_bin(v)
        assert 0 <= b < NUM_LOC_BINS
        assert abs(bin_to_coord(b) - v) <= 0.5 / (NUM_LOC_BINS - 1) + 1e-12
        assert coord_to_bin(bin_to_coord(b)) == b
    assert bin_to_coord(0) == 0.0 and bin_to_coord(NUM_LOC_BINS - 1) == 1.0


def test_loc_token():
    assert loc_token(0) == "<loc0000>" and loc_token(42) == "<loc0042>"
    assert loc_token(NUM_LOC_BINS - 1) == "<loc1023>"
    for bad in (-1, NUM_LOC_BINS):
        with pytest.raises(ValueError, match="0 … 1023"):
            loc_token(bad)


def test_module_docstring_explains_each_fact():
    doc = tokens.__doc__
    for phrase in ("IGNORE_INDEX", "decoder start", "count down", "y0 x0 y1 x1", "round(",
                   "TASK_PREFIXES", "MODE_TOKENS"):
        assert phrase in doc, phrase
