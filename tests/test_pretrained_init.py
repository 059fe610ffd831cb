"""PaLI-3 from public checkpoints (``pali3_edu.convert.pretrained`` and ``.t5_tokenizer``), offline.

Nothing is downloaded: tiny random ``transformers`` models are saved with ``save_pretrained`` to
temporary folders and loaded back by path, and a tiny SentencePiece model trained here stands in
for T5's ``spiece.model``. ``transformers`` is a test dependency: without it these tests fail.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import sentencepiece as spm
import torch
import transformers

from pali3_edu.convert.pretrained import (
    PretrainedUnavailableError,
    init_pali3_from_pretrained,
    load_pretrained_encdec,
    load_pretrained_vit,
    pali3_config_from_pretrained,
    pali3_from_pretrained,
    resize_token_embeddings,
)
from pali3_edu.convert.t5_tokenizer import T5CourseTokenizer, load_t5_tokenizer
from pali3_edu.pali3 import PaLI3, patch_tokens
from pali3_edu.tokenizer import Tokenizer

N_SENTINELS = 8  # T5 has 100; 8 keep the stand-in small
CLOSE = dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# A stand-in for T5's spiece.model
# ---------------------------------------------------------------------------------------------

def _corpus(n_words: int = 300, n_lines: int = 400) -> list[str]:
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "de", "va", "gu", "ri", "so", "fe"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n_words)})
    words += ["a", "red", "circle", "detect", "caption", "en", "the", "blue", "square", "answer"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n_lines)]


def _train_spm(user_defined: list[str]) -> bytes:
    """A unigram SentencePiece model with T5's control ids and normalisation."""
    import io

    out = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=200, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        user_defined_symbols=user_defined, num_threads=1, minloglevel=2,
    )
    return out.getvalue()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """Top-level protobuf fields as ``(number, raw bytes of the whole field)``."""
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield tag >> 3, buf[start:pos]


def _piece_name(field: bytes) -> str:
    _, pos = _varint(field, 0)  # tag
    _, pos = _varint(field, pos)  # length
    for number, raw in _fields(field[pos:]):
        if number == 1:  # SentencePiece.piece
            _, p = _varint(raw, 0)
            n, p = _varint(raw, p)
            return raw[p:p + n].decode()
    raise ValueError("piece without a name")


def _sentinels_on_top(proto: bytes) -> bytes:
    """Move the ``<extra_id_N>`` pieces (the trainer puts user-defined symbols right after the
    control ids) to the top of the vocabulary, counting down: ``<extra_id_0>`` gets the last id."""
    fields = list(_fields(proto))
    pieces = [raw for number, raw in fields if number == 1]
    others = [raw for number, raw in fields if number != 1]
    sentinels = {_piece_name(p): p for p in pieces if _piece_name(p).startswith("<extra_id_")}
    plain = [p for p in pieces if not _piece_name(p).startswith("<extra_id_")]
    top = [sentinels[f"<extra_id_{i}>"] for i in reversed(range(len(sentinels)))]
    return b"".join(plain + top + others)


SENTINEL_NAMES = [f"<extra_id_{i}>" for i in range(N_SENTINELS)]


@pytest.fixture(scope="module")
def plain_spm() -> bytes:
    """Like T5's real spiece.model: no sentinels inside (the tokenizer appends them)."""
    return _train_spm([])


@pytest.fixture(scope="module")
def spm_with_sentinels() -> bytes:
    """Sentinels as user-defined pieces at the top of the SentencePiece vocabulary, counting down."""
    return _sentinels_on_top(_train_spm(SENTINEL_NAMES))


@pytest.fixture(scope="module", params=["appended", "inside"])
def t5_tok(request, plain_spm, spm_with_sentinels) -> T5CourseTokenizer:
    if request.param == "appended":
        return T5CourseTokenizer(plain_spm, num_sentinels=N_SENTINELS)
    return T5CourseTokenizer(spm_with_sentinels)


def _round_up(n: int, m: int = 128) -> int:
    return -(-n // m) * m


# ---------------------------------------------------------------------------------------------
# Tiny transformers checkpoints in folders
# ---------------------------------------------------------------------------------------------

VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
TEXT = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
            num_attention_heads=4, max_position_embeddings=12, bos_token_id=None, eos_token_id=1,
            pad_token_id=1)


def _hf_t5(vocab: int, **overrides) -> transformers.T5ForConditionalGeneration:
    """A random T5 v1.1 (gated-GELU, untied head) unless ``overrides`` say otherwise."""
    torch.manual_seed(0)
    kw = dict(vocab_size=vocab, d_model=32, d_kv=12, d_ff=64, num_layers=2, num_decoder_layers=2,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
              decoder_start_token_id=0)
    kw.update(overrides)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
    if not kw["tie_word_embeddings"]:
        # transformers 5 ties lm_head to `shared` in memory even for v1.1 configs: give it its
        # own weights (a v1.1 checkpoint file holds both), as tests/test_convert_t5.py does
        with torch.no_grad():
            hf.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, 32) * 2)
    return hf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, plain_spm):
    """Folders: a whole SiglipModel, a SiglipVisionModel, T5 v1.1 (+ spiece.model), T5 v1.0 (tied)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    siglip = transformers.SiglipModel(transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    siglip.save_pretrained(root / "siglip")
    torch.manual_seed(1)
    vision = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)).eval()
    vision.save_pretrained(root / "siglip-vision")
    tok = T5CourseTokenizer(plain_spm, num_sentinels=N_SENTINELS)
    t5_vocab = _round_up(tok.original_vocab_size)  # as T5 pads 32,100 ids to 32,128 rows
    t5 = _hf_t5(t5_vocab)
    t5.save_pretrained(root / "t5")
    # a T5 checkpoint folder ships spiece.model and a tokenizer_config.json that says how many
    # sentinels its tokenizer appends (100 for T5; 8 here)
    (root / "t5" / "spiece.model").write_bytes(plain_spm)
    (root / "t5" / "tokenizer_config.json").write_text(json.dumps(
        {"extra_ids": N_SENTINELS, "tokenizer_class": "T5Tokenizer", "model_max_length": 512}))
    t5_tied = _hf_t5(t5_vocab, feed_forward_proj="relu", tie_word_embeddings=True)
    t5_tied.save_pretrained(root / "t5-tied")
    return dict(root=root, siglip=siglip, vision=vision, t5=t5, t5_tied=t5_tied, t5_vocab=t5_vocab)


def _pixels(size: int = 32, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def _text_inputs(vocab: int):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, vocab, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    dec = torch.randint(3, vocab, (2, 7), generator=g)
    dec[:, 0] = 0  # the decoder starts from pad
    return ids, mask, dec


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------

def test_t5_tokenizer_keeps_t5_ids_and_appends_course_tokens(t5_tok) -> None:
    tok = t5_tok
    assert tok.original_vocab_size == tok.num_text_tokens + N_SENTINELS
    if tok.sp.id_to_piece(tok.sp.get_piece_size() - 1) == "<extra_id_0>":  # sentinels inside the model
        assert tok.original_vocab_size == tok.sp.get_piece_size()
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    # sentinels count down from the top of the original vocabulary, as T5's
    assert tok.sentinel_id(0) == tok.original_vocab_size - 1
    assert tok.sentinel_ids == [tok.original_vocab_size - 1 - i for i in range(N_SENTINELS)]
    assert tok.encode("<extra_id_0> red <extra_id_3>", add_eos=False)[0] == tok.sentinel_id(0)
    assert all(tok.is_sentinel(i) for i in tok.sentinel_ids)
    # plain text gets exactly the SentencePiece ids (what a T5 checkpoint was trained on) + EOS
    text = "detect the red circle"
    assert tok.encode(text) == tok.sp.encode(text) + [1]
    # the course's tokens come after, each a single id the checkpoint has never seen
    assert tok.loc_id(0) == tok.original_vocab_size
    assert list(tok.loc_ids) == list(range(tok.original_vocab_size, tok.original_vocab_size + 1024))
    assert tok.seg_id(127) == tok.original_vocab_size + 1024 + 127
    assert tok.vocab_size == tok.original_vocab_size + 1024 + 128 + 3
    assert tok.padded_vocab_size == _round_up(tok.vocab_size)
    for name in ["<loc0000>", "<loc0512>", "<loc1023>", "<seg017>", "[NLU]", "[NLG]", "[S2S]"]:
        ids = tok.encode(name, add_eos=False)
        assert len(ids) == 1 and ids[0] >= tok.original_vocab_size and tok.is_new(ids[0]), name
    assert tok.mode_id("[S2S]") == tok.vocab_size - 1
    assert tok.encode("<loc0512>", add_eos=False) == [tok.loc_id(512)]


def test_t5_tokenizer_round_trips_locations(t5_tok) -> None:
    tok = t5_tok
    assert tok.decode(tok.encode("<loc0512>"), skip_special_tokens=True) == "<loc0512>"
    text = "<loc0001><loc0002><loc0510><loc1023> red circle"
    ids = tok.encode(text)
    assert ids[:4] == [tok.loc_id(k) for k in (1, 2, 510, 1023)]
    assert tok.decode(ids, skip_special_tokens=True) == text
    batch = tok.batch_encode(["detect red circle", "<loc0512> blue"], max_length=12)
    assert tok.batch_decode(batch["input_ids"]) == ["detect red circle", "<loc0512> blue"]
    assert tok.decode([tok.sentinel_id(2)]) == "<extra_id_2>"


def test_t5_tokenizer_fingerprint_save_and_load(t5_tok, tmp_path) -> None:
    course = Tokenizer(t5_tok._model_proto, num_sentinels=N_SENTINELS)  # the course's own layout
    assert t5_tok.fingerprint != course.fingerprint  # same pieces, different ids: not the same
    assert t5_tok != course
    folder = t5_tok.save(tmp_path / "tok")
    assert json.loads((folder / "tokenizer_config.json").read_text())["format"] == "pali3_edu.t5_tokenizer/1"
    back = load_t5_tokenizer(folder)
    assert isinstance(back, T5CourseTokenizer) and back == t5_tok and back.fingerprint == t5_tok.fingerprint
    assert back.loc_id(512) == t5_tok.loc_id(512)
    # a course-layout folder is refused: its ids do not match a T5 checkpoint
    course.save(tmp_path / "course")
    with pytest.raises(ValueError, match="course-layout"):
        load_t5_tokenizer(tmp_path / "course")
    # a bare .model file works too
    (tmp_path / "x.model").write_bytes(t5_tok._model_proto)
    assert load_t5_tokenizer(tmp_path / "x.model", num_sentinels=t5_tok.num_sentinels) == t5_tok


def test_t5_tokenizer_from_checkpoint_folder(ckpt) -> None:
    tok = load_t5_tokenizer(ckpt["root"] / "t5", num_sentinels=N_SENTINELS)
    assert tok.original_vocab_size <= ckpt["t5_vocab"] < tok.padded_vocab_size
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        load_t5_tokenizer(ckpt["root"] / "siglip")


def test_t5_tokenizer_refuses_layouts_that_cannot_keep_t5_ids() -> None:
    # the trainer puts user-defined sentinels right after the control ids: not where T5 has them
    with pytest.raises(ValueError, match="top of the vocabulary"):
        T5CourseTokenizer(_train_spm(SENTINEL_NAMES))
    import io

    out = io.BytesIO()  # a SentencePiece model without T5's control ids
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=100,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    with pytest.raises(ValueError, match="not a T5 SentencePiece model"):
        T5CourseTokenizer(out.getvalue())


# ---------------------------------------------------------------------------------------------
# The two halves
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["siglip", "siglip-vision"])
def test_load_pretrained_vit_matches_transformers(ckpt, folder) -> None:
    hf = ckpt["siglip"].vision_model if folder == "siglip" else ckpt["vision"]
    px = _pixels()
    vit = load_pretrained_vit(ckpt["root"] / folder).eval()
    headless = load_pretrained_vit(str(ckpt["root"] / folder), with_head=False).eval()
    assert headless.cfg.pool == "none" and not any(k.startswith("head.") for k in headless.state_dict())
    with torch.no_grad():
        ref = hf(pixel_values=px)
        out, tokens = vit(px), headless(px).tokens
    torch.testing.assert_close(out.tokens, ref.last_hidden_state, **CLOSE)
    torch.testing.assert_close(out.pooled, ref.pooler_output, **CLOSE)
    torch.testing.assert_close(tokens, ref.last_hidden_state, **CLOSE)
    assert vit.posemb.dtype == torch.float32


@pytest.mark.parametrize("kind", ["t5", "t5-tied"])
def test_resized_encdec_matches_transformers_on_old_ids(ckpt, kind) -> None:
    hf = ckpt["t5" if kind == "t5" else "t5_tied"]
    old = ckpt["t5_vocab"]
    model = load_pretrained_encdec(ckpt["root"] / kind)
    assert model.cfg.vocab_size == old and model.cfg.tie_word_embeddings == (kind == "t5-tied")
    ids, mask, dec = _text_inputs(old)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        before = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(before, ref, **CLOSE)
        new = old + 1000
        assert resize_token_embeddings(model, new, seed=0) is model
        assert model.cfg.vocab_size == new and model.embed_tokens.weight.shape == (new, 32)
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert logits.shape[-1] == new
    torch.testing.assert_close(logits[..., :old], ref, **CLOSE)
    # every old row bit-identical; the new embedding rows N(0, 1); the new head rows the old mean
    assert torch.equal(model.embed_tokens.weight[:old], hf.shared.weight)
    extra = model.embed_tokens.weight[old:]
    assert abs(extra.mean().item()) < 0.05 and abs(extra.std().item() - 1) < 0.05
    if kind == "t5":
        assert torch.equal(model.lm_head.weight[:old], hf.lm_head.weight)
        mean = hf.lm_head.weight.double().mean(0).float()
        torch.testing.assert_close(model.lm_head.weight[old:], mean.expand(new - old, -1), rtol=0, atol=1e-7)
    else:
        assert model.lm_head is None


def test_resize_token_embeddings_is_seeded_and_refuses_to_shrink(ckpt) -> None:
    a = load_pretrained_encdec(ckpt["root"] / "t5")
    b = load_pretrained_encdec(ckpt["root"] / "t5")
    resize_token_embeddings(a, 600, seed=5)
    resize_token_embeddings(b, 600, seed=5)
    assert torch.equal(a.embed_tokens.weight, b.embed_tokens.weight)
    assert resize_token_embeddings(a, 600) is a  # same size: nothing to do
    with pytest.raises(ValueError, match="only grows"):
        resize_token_embeddings(a, 100)
    assert a.embed_tokens.weight.requires_grad and a.lm_head.weight.requires_grad


# ---------------------------------------------------------------------------------------------
# PaLI-3 from both
# ---------------------------------------------------------------------------------------------

def test_pali3_from_pretrained_matches_both_checkpoints(ckpt, plain_spm) -> None:
    root = ckpt["root"]
    tok = load_t5_tokenizer(root / "t5", num_sentinels=N_SENTINELS)
    cfg = pali3_config_from_pretrained(root / "siglip", root / "t5", tokenizer=tok)
    assert cfg.vision.pool == "none" and cfg.vision.width == 64 and cfg.vision.image_size == 32
    assert cfg.text.vocab_size == tok.padded_vocab_size > ckpt["t5_vocab"]
    assert cfg.text.d_model == 32 and not cfg.text.tie_word_embeddings
    model = pali3_from_pretrained(root / "siglip", root / "t5", tokenizer=tok).eval()
    assert model.tokenizer is tok and model.cfg.text.vocab_size == tok.padded_vocab_size
    hf_v, hf_t, old = ckpt["siglip"].vision_model, ckpt["t5"], ckpt["t5_vocab"]
    px = _pixels()
    ids, mask, dec = _text_inputs(old)
    with torch.no_grad():
        torch.testing.assert_close(patch_tokens(model.vit, px), hf_v(pixel_values=px).last_hidden_state, **CLOSE)
        ref = hf_t(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        out = model.encdec(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(out[..., :old], ref, **CLOSE)
        assert torch.equal(model.encdec.embed_tokens.weight[:old], hf_t.shared.weight)
        # the whole model runs with the course's tokens in the prompt and the answer
        enc = tok.batch_encode(["detect red circle", "<loc0512> caption en"], max_length=cfg.max_prompt_len)
        labels = tok.batch_encode(["<loc0001><loc0002><loc0003><loc0004> circle"] * 2)["input_ids"]
        result = model(px, enc["input_ids"], enc["attention_mask"], labels=labels)
    assert torch.isfinite(result.loss) and result.logits.shape[-1] == tok.padded_vocab_size


def test_default_tokenizer_comes_from_the_t5_folder(ckpt, tmp_path) -> None:
    root = ckpt["root"]
    cfg = pali3_config_from_pretrained(root / "siglip-vision", root / "t5")
    tok = load_t5_tokenizer(root / "t5")  # extra_ids from the folder's tokenizer_config.json
    assert tok.num_sentinels == N_SENTINELS and tok.original_vocab_size <= ckpt["t5_vocab"]
    assert cfg.text.vocab_size == tok.padded_vocab_size
    # without that file, T5's 100 sentinels, which do not fit this tiny checkpoint: refused
    (tmp_path / "t5").mkdir()
    for f in (root / "t5").iterdir():
        if f.name != "tokenizer_config.json":
            (tmp_path / "t5" / f.name).write_bytes(f.read_bytes())
    assert load_t5_tokenizer(tmp_path / "t5").num_sentinels == 100
    with pytest.raises(ValueError, match="does not keep the checkpoint's ids"):
        pali3_config_from_pretrained(root / "siglip-vision", tmp_path / "t5")


def test_init_interpolates_the_position_grid_for_another_resolution(ckpt) -> None:
    root = ckpt["root"]
    tok = load_t5_tokenizer(root / "t5", num_sentinels=N_SENTINELS)
    cfg = pali3_config_from_pretrained(root / "siglip-vision", root / "t5", tokenizer=tok,
                                       image_size=48, posemb_resize="bicubic")
    torch.manual_seed(0)
    model = init_pali3_from_pretrained(PaLI3(cfg), siglip=root / "siglip-vision").eval()
    px = _pixels(48)
    with torch.no_grad():  # bicubic resizing is what transformers' interpolate_pos_encoding does
        ref = ckpt["vision"](pixel_values=px, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(patch_tokens(model.vit, px), ref, **CLOSE)


def test_init_refuses_mismatched_models_and_tokenizers(ckpt, plain_spm) -> None:
    root = ckpt["root"]
    tok = load_t5_tokenizer(root / "t5", num_sentinels=N_SENTINELS)
    cfg = pali3_config_from_pretrained(root / "siglip", root / "t5", tokenizer=tok)
    wrong_vit = PaLI3(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, depth=3)))
    with pytest.raises(ValueError, match="depth"):
        init_pali3_from_pretrained(wrong_vit, siglip=root / "siglip")
    wrong_text = PaLI3(dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, d_ff=48)))
    with pytest.raises(ValueError, match="d_ff"):
        init_pali3_from_pretrained(wrong_text, t5=root / "t5")
    # a course-layout tokenizer would put <loc0000> on a trained T5 sentinel row
    course = Tokenizer(plain_spm, num_sentinels=N_SENTINELS)
    with pytest.raises(ValueError, match="does not keep the checkpoint's ids"):
        pali3_config_from_pretrained(root / "siglip", root / "t5", tokenizer=course)
    with pytest.raises(ValueError, match="does not keep the checkpoint's ids"):
        init_pali3_from_pretrained(PaLI3(cfg), t5=root / "t5", tokenizer=course)
    with pytest.raises(ValueError, match="not a SigLIP"):
        load_pretrained_vit(root / "t5")
    with pytest.raises(ValueError, match="not a T5"):
        load_pretrained_encdec(root / "siglip")


# ---------------------------------------------------------------------------------------------
# Clear errors for what is not there
# ---------------------------------------------------------------------------------------------

def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    for load in (load_pretrained_vit, load_pretrained_encdec, load_t5_tokenizer):
        with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
            load(tmp_path / "nope")
        with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
            load("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained_vit(tmp_path / "empty")


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_hub_name_is_a_clear_error(tmp_path, monkeypatch, variable) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")  # only the (empty) cache is read: no network
    name = "pali3-edu-tests/no-such-model"
    for load in (load_pretrained_vit, load_pretrained_encdec, load_t5_tokenizer):
        with pytest.raises(PretrainedUnavailableError, match=f"`hf download {name} --local-dir") as e:
            load(name, cache_dir=str(tmp_path))
        message = str(e.value)
        assert "No internet" in message and f"huggingface-cli download {name}" in message
        assert "HF_HUB_OFFLINE" in message and "pass" in message and "./no-such-model" in message
        assert isinstance(e.value, OSError)


def test_stage1_recipe_from_public_checkpoints_trains(ckpt, tmp_path, monkeypatch) -> None:
    """The PaLI-3 stage-1 recipe started from (local copies of) public checkpoints: sizes from
    their configs, T5's vocabulary plus the course tokens, trained and cached like any stage."""
    from PIL import Image

    from pali3_edu.recipes import load_or_train
    from pali3_edu.recipes.pali3 import pretrained_recipe

    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    recipe = pretrained_recipe(str(ckpt["root"] / "siglip-vision"), str(ckpt["root"] / "t5"), "micro",
                               max_prompt_len=96, max_answer_len=160, steps=2, warmup_steps=1,
                               **{"data.mix.num_scenes": 16, "data.mix.batch_size": 4})
    assert recipe.upstream == {} and recipe.model.vision.image_size == VISION["image_size"]
    run = load_or_train(recipe, progress=False, device="cpu")
    assert isinstance(run.tokenizer, T5CourseTokenizer)
    assert run.model.encdec.cfg.vocab_size == run.tokenizer.padded_vocab_size
    assert not run.loaded and len(run.history.losses) >= 1
    run.model.tokenizer = run.tokenizer
    assert len(run.model.predict([Image.new("RGB", (40, 40))], "caption en", max_new_tokens=3)) == 1
    assert load_or_train(recipe, progress=False, device="cpu").loaded
