"""The course tokenizer: id layout, special tokens, round trips, batching, saving and loading."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import string
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pali3_edu.data
from pali3_edu import tokenizer as tokenizer_module
from pali3_edu.cache import MANIFEST_NAME, write_manifest
from pali3_edu.data.shapesworld import text_corpus
from pali3_edu.exercises.lesson01 import check_encode_box, check_tokenizer_roundtrip
from pali3_edu.tokenizer import (
    MODE_TOKENS,
    PROMPT_TEXTS,
    Tokenizer,
    course_tokenizer,
    course_tokenizer_recipe,
    train_tokenizer,
)
from pali3_edu.tokens import TASK_PREFIXES

N_SPECIAL = 1024 + 128 + 3 + 100
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]


def _sentences(n: int = 1500, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = f"{rng.choice(['large', 'small'])} {rng.choice(COLORS)} {rng.choice(SHAPES)}"
        b = f"{rng.choice(['large', 'small'])} {rng.choice(COLORS)} {rng.choice(SHAPES)}"
        out.append(f"A {a} {rng.choice(['left of', 'right of', 'above', 'below'])} a {b}.")
        out.append(f"What color is the {rng.choice(SHAPES)}? {rng.choice(COLORS)}.")
        out.append(f"How many shapes are there? {rng.randint(0, 9)}.")
    return out + list(PROMPT_TEXTS) * 10


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(_sentences(), vocab_size=300)


def _plain_sp_model(**kwargs) -> bytes:
    """A SentencePiece model trained with SentencePiece's own defaults (dummy prefix, NFKC ...)."""
    f = io.BytesIO()
    args = dict(sentence_iterator=iter(_sentences(500)), model_writer=f, vocab_size=120,
                hard_vocab_limit=False, minloglevel=2, num_threads=1)
    spm.SentencePieceTrainer.train(**{**args, **kwargs})
    return f.getvalue()


# --------------------------------------------------------------------------- layout
def test_id_layout(tok):
    n = tok.num_text_tokens
    assert n <= 300
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert tok.vocab_size == len(tok) == n + N_SPECIAL
    assert tok.padded_vocab_size % 128 == 0 and 0 <= tok.padded_vocab_size - tok.vocab_size < 128
    # loc, seg, modes, sentinels appended in that order after the SentencePiece pieces
    assert tok.loc_id(0) == n and tok.loc_id(1023) == n + 1023
    assert tok.seg_id(0) == n + 1024 and tok.seg_id(127) == n + 1151
    assert [tok.mode_id(m) for m in MODE_TOKENS.values()] == [n + 1152, n + 1153, n + 1154]
    # T5: <extra_id_0> is the highest id, and they count down
    assert tok.sentinel_id(0) == tok.vocab_size - 1 == tok.token_to_id("<extra_id_0>")
    assert tok.sentinel_id(99) == n + 1155
    assert tok.sentinel_ids == [tok.vocab_size - 1 - i for i in range(100)]
    assert list(tok.loc_ids) == [tok.loc_id(k) for k in range(1024)]
    assert list(tok.seg_ids) == [tok.seg_id(k) for k in range(128)]
    assert tok.mode_ids == {"[NLU]": n + 1152, "[NLG]": n + 1153, "[S2S]": n + 1154}
    assert tok.is_special(0) and tok.is_special(tok.loc_id(5)) and not tok.is_special(n - 1)
    assert tok.is_sentinel(tok.sentinel_id(3)) and not tok.is_sentinel(tok.mode_id("[S2S]"))
    assert tok.is_loc(tok.loc_id(7)) and tok.is_seg(tok.seg_id(7)) and not tok.is_loc(tok.seg_id(0))


def test_every_special_token_is_one_id(tok):
    names = tok.special_tokens
    assert len(names) == 3 + N_SPECIAL and len(set(names)) == len(names)
    for name in names:
        ids = tok.encode(name, add_eos=False)
        assert ids == [tok.token_to_id(name)], name
        assert tok.id_to_token(ids[0]) == name
        assert tok.decode(ids) == name
    assert tok.encode("<loc0042>", add_eos=False) == [tok.loc_id(42)]
    assert tok.encode("<seg017>", add_eos=False) == [tok.seg_id(17)]
    assert tok.encode("<extra_id_7>", add_eos=False) == [tok.sentinel_id(7)]


def test_token_id_maps_are_inverse(tok):
    for i in range(tok.vocab_size):
        assert tok.token_to_id(tok.id_to_token(i)) == i


def test_course_default_fits_the_config_vocab():
    """512 pieces + 1255 specials = 1767 rows -> padded to 1792, the configs' vocab_size."""
    from pali3_edu.config import TextConfig

    noise = " ".join(random.Random(1).choices(string.ascii_lowercase, k=4000))  # fills 512 pieces
    t = train_tokenizer(_sentences() + [noise])
    assert t.vocab_size <= 512 + N_SPECIAL
    assert t.padded_vocab_size <= TextConfig().vocab_size == 1792


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "text",
    [
        "<loc0001><loc0002><loc0003><loc0004> circle",
        "<loc0010><loc0020><loc0300><loc0400> red circle ; <loc0100><loc0200><loc0300><loc1023> x",
        "caption en",
        "A large red circle left of a small blue square.",
        "[NLU] a red <extra_id_0> left of <extra_id_1>",
        "  leading and trailing spaces  ",
        "tabs are rare\nbut newlines work",
        "",
        "<seg000><seg127> segment star",
        "<loc0001>x<loc0002> y <extra_id_99>",
    ],
)
def test_round_trip_examples(tok, text):
    ids = tok.encode(text)
    assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
    assert tok.decode(ids[:-1]) == text
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == text + "</s>"


_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"
_SPECIALS = ["<loc0000>", "<loc0511>", "<loc1023>", "<seg042>", "[NLU]", "[S2S]",
             "<extra_id_0>", "<extra_id_57>"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(_ALPHABET, max_size=30), st.sampled_from(_SPECIALS)), max_size=6))
def test_round_trip_property(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text, add_eos=False)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_word_at_start_is_the_same_piece_as_mid_text(tok):
    """The dummy prefix: 'red' alone is encoded like ' red' inside a sentence."""
    alone = tok.encode("red", add_eos=False)
    inside = tok.encode("a red", add_eos=False)
    assert inside[-len(alone):] == alone
    assert tok.id_to_token(alone[0]) == "\u2581red"


def test_unknown_characters_become_unk(tok):
    ids = tok.encode("é", add_eos=False)
    assert tok.unk_id in ids
    with_bytes = train_tokenizer(_sentences(200), vocab_size=400, byte_fallback=True)
    ids = with_bytes.encode("café ☃", add_eos=False)
    assert with_bytes.unk_id not in ids and with_bytes.decode(ids) == "café ☃"


def test_training_is_deterministic():
    a = train_tokenizer(_sentences(300), vocab_size=200)
    b = train_tokenizer(_sentences(300), vocab_size=200)
    assert a == b and a.encode("a small red star") == b.encode("a small red star")


# --------------------------------------------------------------------------- batching
def test_batch_encode_longest(tok):
    texts = ["red", "a large red circle left of a small blue square", ""]
    out = tok.batch_encode(texts)
    ids, mask = out["input_ids"], out["attention_mask"]
    singles = [tok.encode(t) for t in texts]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.shape == mask.shape == (3, max(map(len, singles)))
    for b, s in enumerate(singles):
        assert ids[b, : len(s)].tolist() == s
        assert (ids[b, len(s):] == tok.pad_id).all()
        assert mask[b].tolist() == [1] * len(s) + [0] * (ids.shape[1] - len(s))
    assert tok.batch_decode(ids) == texts


def test_batch_encode_max_length_truncation_keeps_eos(tok):
    long = "a large red circle left of a small blue square above a small green star"
    n = len(tok.encode(long))
    out = tok.batch_encode([long, "red"], max_length=5, padding="max_length")
    ids = out["input_ids"]
    assert ids.shape == (2, 5) and n > 5
    assert ids[0].tolist() == tok.encode(long)[:4] + [tok.eos_id]
    assert out["attention_mask"][0].tolist() == [1] * 5
    no_eos = tok.batch_encode([long], max_length=5, add_eos=False)["input_ids"]
    assert no_eos[0].tolist() == tok.encode(long, add_eos=False)[:5]
    # padding="max_length" pads short batches up to max_length
    short = tok.batch_encode(["red"], max_length=9, padding="max_length")
    assert short["input_ids"].shape == (1, 9)
    assert short["attention_mask"].sum() == len(tok.encode("red"))


def test_truncation_false_raises_with_length_and_limit(tok):
    long = "a large red circle left of a small blue square"
    n = len(tok.encode(long))
    with pytest.raises(ValueError, match=rf"{n} tokens.*max_length is 4"):
        tok.batch_encode(["red", long], max_length=4, truncation=False)


def test_sticky_eos_padding(tok):
    texts = ["red", "a small blue square"]
    out = tok.batch_encode(texts, max_length=8, padding="max_length", pad_id=tok.eos_id)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert (ids[:, -1] == tok.eos_id).all()
    assert mask[0].sum() == len(tok.encode("red"))  # the mask still marks the padding
    assert tok.batch_decode(ids) == ["red", "a small blue square"]


def test_padding_false_and_lists(tok):
    out = tok.batch_encode(["red", "a red star"], padding=False, return_tensors=None)
    assert out["input_ids"] == [tok.encode("red"), tok.encode("a red star")]
    assert out["attention_mask"] == [[1] * len(x) for x in out["input_ids"]]
    with pytest.raises(ValueError, match="different lengths"):
        tok.batch_encode(["red", "a red star"], padding=False)
    with pytest.raises(ValueError, match="needs max_length"):
        tok.batch_encode(["red"], padding="max_length")
    with pytest.raises(ValueError, match="padding must be"):
        tok.batch_encode(["red"], padding="left")


def test_batch_decode_cuts_at_first_eos(tok):
    red = tok.encode("red", add_eos=False)
    star = tok.encode("a star", add_eos=False)
    rows = torch.tensor([
        [tok.pad_id, *red, tok.eos_id, *star],
        [*star, tok.eos_id, tok.pad_id, tok.pad_id],
    ])
    assert tok.batch_decode(rows) == ["red", "a star"]
    assert tok.batch_decode(rows, skip_special_tokens=False) == ["<pad>red", "a star"]
    # decode() itself does not stop at EOS (and the 2nd text keeps its dummy-prefix space)
    assert tok.decode(rows[0], skip_special_tokens=True) == "red a star"


# --------------------------------------------------------------------------- saving and loading
def test_save_load_round_trip(tok, tmp_path):
    folder = tok.save(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["vocab_size"] == tok.vocab_size
    again = Tokenizer.load(folder)
    assert again == tok and hash(again) == hash(tok) and again.vocab_size == tok.vocab_size
    assert pickle.loads(pickle.dumps(tok)) == tok
    text = "<loc0001><loc0002><loc0003><loc0004> circle [NLG] <extra_id_3>"
    assert again.encode(text) == tok.encode(text)
    # the bare .model file inside gives the same tokenizer (default layout)
    assert Tokenizer.load(folder / "spiece.model") == tok


def test_custom_layout_survives_save(tmp_path):
    small = train_tokenizer(
        _sentences(200), vocab_size=150, num_loc=16, num_seg=0, mode_tokens=(), num_sentinels=5
    )
    assert small.vocab_size == small.num_text_tokens + 16 + 5
    assert small.sentinel_id(0) == small.vocab_size - 1
    with pytest.raises(ValueError, match="out of range"):
        small.loc_id(16)
    loaded = Tokenizer.load(small.save(tmp_path / "small"))
    assert loaded == small and loaded.vocab_size == small.vocab_size
    # only <loc0000> … <loc0015> exist here: "<loc0020>" is plain text, several ordinary pieces
    ids = loaded.encode("<loc0020>", add_eos=False)
    assert len(ids) > 1 and not any(loaded.is_special(i) for i in ids), ids
    assert loaded.encode("<loc0015>", add_eos=False) == [loaded.loc_id(15)]  # the last one is
    assert loaded.decode(ids) == "<loc0020>"


def test_load_plain_sentencepiece_model(tmp_path):
    """A model with SentencePiece's defaults (T5-like ids, dummy prefix, whitespace clean-up)."""
    path = tmp_path / "plain.model"
    path.write_bytes(_plain_sp_model(pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    t = Tokenizer.load(path)
    n = t.num_text_tokens
    assert (t.pad_id, t.eos_id, t.unk_id) == (0, 1, 2)
    assert t.vocab_size == n + N_SPECIAL and t.sentinel_id(0) == t.vocab_size - 1
    texts = ["a red circle<loc0001> square", "<loc0001><loc0002><loc0003><loc0004> circle",
             "[S2S] a blue star"]
    for text in texts:
        assert t.decode(t.encode(text, add_eos=False)) == text
    # the T5 layout: only the 100 sentinels, right after the pieces (as Hugging Face's T5Tokenizer)
    t5 = Tokenizer.load(path, num_loc=0, num_seg=0, mode_tokens=())
    assert t5.vocab_size == n + 100 and t5.sentinel_id(0) == n + 99 and t5.sentinel_id(99) == n


def test_load_model_without_pad(tmp_path):
    """Llama-style ids (unk 0, bos 1, eos 2, no pad): pad is appended before the loc tokens."""
    path = tmp_path / "llama_like.model"
    path.write_bytes(_plain_sp_model())  # SentencePiece defaults: unk 0, bos 1, eos 2, pad -1
    t = Tokenizer.load(path)
    n = t.num_text_tokens
    assert (t.unk_id, t.eos_id, t.pad_id) == (0, 2, n)
    assert t.loc_id(0) == n + 1 and t.sentinel_id(0) == t.vocab_size - 1 == n + 1 + N_SPECIAL - 1
    out = t.batch_encode(["a red star", "a"])
    assert out["input_ids"][1, -1] == n and t.batch_decode(out["input_ids"]) == ["a red star", "a"]


# --------------------------------------------------------------------------- errors
def test_clear_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="unknown UL2 mode"):
        tok.mode_id("[XYZ]")
    assert tok.mode_id("NLU") == tok.mode_id("[NLU]")
    with pytest.raises(ValueError, match="extra_id_99"):
        tok.sentinel_id(100)
    with pytest.raises(ValueError, match="loc1023"):
        tok.loc_id(1024)
    with pytest.raises(ValueError, match="seg127"):
        tok.seg_id(-1)
    assert tok.decode([tok.vocab_size]) == "<unk>"  # a padding row: written, never a crash
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, tok.padded_vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_token(tok.padded_vocab_size - 1)
    with pytest.raises(ValueError, match="-100"):
        tok.decode([5, -100])
    with pytest.raises(KeyError, match="not a token"):
        tok.token_to_id("definitely-not-a-piece")
    with pytest.raises(TypeError, match="batch_encode"):
        tok.encode(["a", "b"])
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        Tokenizer.load(tmp_path)
    (tmp_path / "junk.model").write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["a red circle"], vocab_size=20)
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer(["a red circle"], model_type="wordpiece")


# --------------------------------------------------------------------------- the course tokenizer
def _fake_world(monkeypatch, version: str, calls: list[int]) -> None:
    fake = types.ModuleType("pali3_edu.data.shapesworld")
    fake.GENERATOR_VERSION = version

    def text_corpus(num_scenes: int = 2000, split: str = "train") -> list[str]:
        calls.append(num_scenes)
        return _sentences(num_scenes)

    fake.text_corpus = text_corpus
    monkeypatch.setitem(sys.modules, "pali3_edu.data.shapesworld", fake)
    monkeypatch.setattr(pali3_edu.data, "shapesworld", fake, raising=False)


def _cache_folders(root: Path) -> list[Path]:
    """The published tokenizer folders (not the lock files next to them)."""
    return [p for p in (root / "tokenizer").iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_course_tokenizer_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    calls: list[int] = []
    _fake_world(monkeypatch, "0.test", calls)
    first = course_tokenizer(vocab_size=200, num_scenes=300)
    assert len(calls) >= 1
    n_calls = len(calls)
    second = course_tokenizer(vocab_size=200, num_scenes=300)
    assert len(calls) == n_calls and second == first  # loaded from the cache, nothing retrained
    folders = _cache_folders(tmp_path)
    assert len(folders) == 1 and "0.test" in folders[0].name and "300" in folders[0].name
    assert first.fingerprint == second.fingerprint
    # the folder is named and sealed with the recipe's fingerprint
    recipe = course_tokenizer_recipe(vocab_size=200, num_scenes=300)
    assert folders[0].name.endswith(recipe["fingerprint"])
    manifest = json.loads((folders[0] / MANIFEST_NAME).read_text())
    assert manifest["meta"]["recipe_fingerprint"] == recipe["fingerprint"]
    # a new generator version is a new cache entry
    _fake_world(monkeypatch, "0.test2", calls)
    course_tokenizer(vocab_size=200, num_scenes=300)
    assert len(calls) > n_calls and len(_cache_folders(tmp_path)) == 2


def test_editing_a_prompt_trains_a_new_tokenizer(monkeypatch, tmp_path):
    """The bug this guards against: a changed prompt silently reused the old cached tokenizer."""
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    _fake_world(monkeypatch, "0.prompts", [])
    before = course_tokenizer(vocab_size=200, num_scenes=300)
    fp_before = course_tokenizer_recipe(vocab_size=200, num_scenes=300)["fingerprint"]
    new_prompts = (*PROMPT_TEXTS, "describe zebra zebra")
    monkeypatch.setattr(tokenizer_module, "PROMPT_TEXTS", new_prompts)
    assert course_tokenizer_recipe(vocab_size=200, num_scenes=300)["fingerprint"] != fp_before
    after = course_tokenizer(vocab_size=200, num_scenes=300)
    assert len(_cache_folders(tmp_path)) == 2
    assert after.fingerprint != before.fingerprint and after != before  # trained on the new text


@pytest.mark.parametrize("change", [
    {"vocab_size": 210}, {"model_type": "unigram"}, {"num_scenes": 301},
])
def test_recipe_fingerprint_covers_the_parameters(monkeypatch, change):
    _fake_world(monkeypatch, "0.params", [])
    base = dict(vocab_size=200, num_scenes=300, model_type="bpe")
    assert (course_tokenizer_recipe(**base)["fingerprint"]
            != course_tokenizer_recipe(**{**base, **change})["fingerprint"])


def test_recipe_fingerprint_covers_layout_and_version(monkeypatch):
    _fake_world(monkeypatch, "0.layout", [])
    fp = course_tokenizer_recipe(vocab_size=200, num_scenes=300)["fingerprint"]
    monkeypatch.setattr(tokenizer_module, "TOKENIZER_VERSION", "test-version")
    fp_version = course_tokenizer_recipe(vocab_size=200, num_scenes=300)["fingerprint"]
    monkeypatch.setattr(tokenizer_module.Tokenizer, "_default_layout",
                        staticmethod(lambda: {"num_loc": 512}))
    fp_layout = course_tokenizer_recipe(vocab_size=200, num_scenes=300)["fingerprint"]
    assert len({fp, fp_version, fp_layout}) == 3
    # and the scene text itself, not only the version number
    monkeypatch.setattr(tokenizer_module, "_SCENE_TEXT_DIGESTS", {})
    world = sys.modules["pali3_edu.data.shapesworld"]
    monkeypatch.setattr(world, "text_corpus", lambda n, split="train": _sentences(n, seed=1))
    assert course_tokenizer_recipe(vocab_size=200, num_scenes=300)["fingerprint"] != fp_layout


def _damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_empty(path: Path) -> None:
    path.write_bytes(b"")


def _damage_random(path: Path) -> None:  # same size: only the SHA-256 can tell
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_empty, _damage_random],
                         ids=["truncated", "emptied", "random-bytes"])
def test_damaged_cache_is_rebuilt_with_a_message(monkeypatch, tmp_path, capsys, damage):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    calls: list[int] = []
    _fake_world(monkeypatch, "0.damage", calls)
    good = course_tokenizer(vocab_size=200, num_scenes=300)
    (folder,) = _cache_folders(tmp_path)
    damage(folder / "spiece.model")
    capsys.readouterr()
    n_calls = len(calls)
    again = course_tokenizer(vocab_size=200, num_scenes=300)
    err = capsys.readouterr().err
    assert "damaged" in err and "spiece.model" in err and "rebuilding" in err, err
    assert again == good and len(calls) > n_calls  # retrained, same tokenizer as before
    assert Tokenizer.load(folder) == good  # the cache on disk is sound again


def test_cache_that_verifies_but_does_not_load_is_rebuilt(monkeypatch, tmp_path, capsys):
    """A damaged model sealed with a fresh manifest (as by a buggy tool): loading fails, rebuild."""
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    _fake_world(monkeypatch, "0.sealed", [])
    good = course_tokenizer(vocab_size=200, num_scenes=300)
    (folder,) = _cache_folders(tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    _damage_truncate(folder / "spiece.model")
    write_manifest(folder, meta=manifest["meta"])
    capsys.readouterr()
    assert course_tokenizer(vocab_size=200, num_scenes=300) == good
    assert "cannot be used" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_empty, _damage_random],
                         ids=["truncated", "emptied", "random-bytes"])
def test_loading_a_damaged_model_raises_value_error(tok, tmp_path, damage):
    """Not sentencepiece's RuntimeError/IndexError, now or at the first encode."""
    folder = tok.save(tmp_path / "tok")
    damage(folder / "spiece.model")
    with pytest.raises(ValueError, match="spiece.model"):
        Tokenizer.load(folder)
    with pytest.raises(ValueError, match="SentencePiece model"):
        Tokenizer.load(folder / "spiece.model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer((folder / "spiece.model").read_bytes())


def test_two_processes_building_at_once_both_succeed(tmp_path):
    """Two fresh processes ask for the same (uncached) course tokenizer at the same moment."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from pali3_edu.tokenizer import course_tokenizer
        go = Path(sys.argv[1])
        (go / f"ready-{sys.argv[2]}").touch()
        deadline = time.time() + 60
        while len(list(go.glob("ready-*"))) < 2 and time.time() < deadline:
            time.sleep(0.01)
        tok = course_tokenizer(vocab_size=200, num_scenes=150)
        print("FINGERPRINT", tok.fingerprint)
    """)
    env = {**os.environ, "PALI3_EDU_DATA": str(tmp_path / "data")}
    go = tmp_path / "go"
    go.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(go), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    prints = [[line.split()[1] for line in out.splitlines() if line.startswith("FINGERPRINT")]
              for out, _ in outs]
    assert prints[0] == prints[1] and len(prints[0]) == 1
    folders = _cache_folders(tmp_path / "data")
    assert len(folders) == 1 and Tokenizer.load(folders[0]).fingerprint == prints[0][0]
    leftovers = [p.name for p in (tmp_path / "data" / "tokenizer").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_course_tokenizer_on_shapesworld():
    tok = course_tokenizer()
    assert tok.padded_vocab_size <= 1792
    for prompt in TASK_PREFIXES.values():
        for word in prompt.split():
            assert len(tok.encode(word, add_eos=False)) == 1, word  # every prompt word is one piece
    texts = text_corpus(30, split="test")
    enc = tok.batch_encode(texts, padding=False, return_tensors=None)["input_ids"]
    assert all(tok.unk_id not in ids for ids in enc)
    assert tok.batch_decode([ids for ids in enc]) == texts
    assert sum(map(len, texts)) / sum(map(len, enc)) > 3.0  # whole words, not letters


# --------------------------------------------------------------------------- fingerprint
def test_fingerprint_identifies_model_and_layout(tok, tmp_path):
    fp = tok.fingerprint
    assert isinstance(fp, str) and len(fp) == 16 and int(fp, 16) >= 0
    assert Tokenizer.load(tok.save(tmp_path / "t")).fingerprint == fp
    assert Tokenizer(tok._model_proto).fingerprint == fp
    assert Tokenizer(tok._model_proto, num_sentinels=99).fingerprint != fp
    assert Tokenizer(tok._model_proto, mode_tokens=("[NLG]", "[NLU]", "[S2S]")).fingerprint != fp
    # the mode tokens may also be given as pali3_edu.tokens.MODE_TOKENS (kind -> token)
    assert Tokenizer(tok._model_proto, mode_tokens=MODE_TOKENS) == tok


def test_fingerprint_tells_apart_tokenizers_of_the_same_size():
    """Same vocabulary size, different training text: different ids, different fingerprint."""
    a = train_tokenizer(_sentences(300), vocab_size=120)
    b = train_tokenizer(_sentences(300, seed=5) + ["zebra zebra zebra"] * 50, vocab_size=120)
    assert a.vocab_size == b.vocab_size
    assert a.encode("zebra") != b.encode("zebra")
    assert a.fingerprint != b.fingerprint


def test_load_checks_the_saved_fingerprint(tok, tmp_path):
    folder = tok.save(tmp_path / "t")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["fingerprint"] == tok.fingerprint
    other = train_tokenizer(_sentences(300, seed=5), vocab_size=120)
    (folder / "spiece.model").write_bytes(other._model_proto)  # swapped behind the config's back
    config["vocab_size"] = other.vocab_size
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="fingerprint"):
        Tokenizer.load(folder)


# --------------------------------------------------------------------------- lesson 01 checks
def _right(box):
    return "".join(f"<loc{round(v * 1023):04d}>" for v in box)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda box: "".join(f"<loc{min(int(v * 1024), 1023):04d}>" for v in box), "v \\* 1024"),
        (lambda b: "".join(f"<loc{round(v * 1023):04d}>" for v in (b[1], b[0], b[3], b[2])),
         "y before x"),
        (lambda box: "".join(f"<loc{round(v * 1023)}>" for v in box), "4 digits"),
        (lambda box: " ".join(f"<loc{round(v * 1023):04d}>" for v in box), "no spaces"),
        (lambda box: "".join(f"<loc{int(v * 1023):04d}>" for v in box), "int\\(\\) truncates"),
        (lambda box: "".join(f"<loc{round(v * 1023):04d}>" for v in box[:2]), "exactly 4 tokens"),
        (lambda box: list(box), "a list"),
    ],
)
def test_check_encode_box_explains_mistakes(wrong, message):
    check_encode_box(_right)
    with pytest.raises(AssertionError, match=message):
        check_encode_box(wrong)


def test_check_tokenizer_roundtrip(tok):
    check_tokenizer_roundtrip(tok)

    class Broken(Tokenizer):  # forgets the dummy-prefix strip: a space appears in front
        def decode(self, ids, skip_special_tokens=False):
            return " " + super().decode(ids, skip_special_tokens)

    broken = Broken(tok._model_proto)
    with pytest.raises(AssertionError, match="round trip failed"):
        check_tokenizer_roundtrip(broken)
