"""``python -m pali3_edu.train --init siglip=... t5=...``: PaLI-3 from public checkpoints, offline.

The checkpoints are the tiny random ``transformers`` models of ``tests/test_pretrained_init.py``
(its ``ckpt`` fixture: saved with ``save_pretrained`` to a temporary folder, with a small
SentencePiece model standing in for T5's ``spiece.model``). ``--recipe all --init`` trains stage 1
from them, then stage 2 and transfer, and never the course's own SigLIP and UL2 stages.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_pretrained_init import ckpt, plain_spm  # noqa: F401  (the fixtures: checkpoints in folders)
from test_run import _main

from pali3_edu.checkpoint import load_checkpoint
from pali3_edu.convert.pretrained import load_pretrained_encdec, load_pretrained_vit
from pali3_edu.recipes.base import get_recipe


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "data"
    torch.set_num_threads(threads)


# T5's vocabulary splits the course's words into more pieces: longer texts, and little data
SMALL = ["--set", "model.max_prompt_len=96", "--set", "model.max_answer_len=160", "--steps", "2",
         "--set", "data.mix.num_scenes=16", "--set", "data.mix.batch_size=4", "--device", "cpu", "--quiet"]


def test_init_trains_pali3_from_public_checkpoints(ckpt, data):  # noqa: F811
    siglip, t5 = ckpt["root"] / "siglip-vision", ckpt["root"] / "t5"
    init = ["--init", f"siglip={siglip}", f"t5={t5}"]
    code, out, err = _main("--recipe", "all", "--preset", "smoke", *init, *SMALL)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split("/")[0][1:] for line in lines] == ["pali3-stage1", "pali3-stage2", "pali3-transfer"]
    assert all("] trained: " in line for line in lines), out
    runs = {p.name.rsplit("-smoke", 1)[0]: p for p in (data / "runs").iterdir()}
    assert sorted(runs) == ["pali3-stage1", "pali3-stage2", "pali3-transfer"]  # no siglip, no ul2 run
    resolved = {stage: json.loads((folder / "resolved_recipe.json").read_text()) for stage, folder in runs.items()}

    stage1 = resolved["pali3-stage1"]
    assert stage1["upstream"] == {}
    assert stage1["recipe"]["data"]["stage"]["vision_pretrained"] == str(siglip.resolve())
    assert stage1["recipe"]["data"]["stage"]["text_pretrained"] == str(t5.resolve())
    vision = stage1["recipe"]["model"]["vision"]
    assert (vision["width"], vision["image_size"]) == (64, 32)  # the checkpoint's sizes, not the preset's
    assert stage1["recipe"]["model"]["text"]["d_model"] == 32
    # each later stage starts from the one before it, with stage 1's model at its own resolution
    for stage, previous, size in (("pali3-stage2", "pali3-stage1", 64), ("pali3-transfer", "pali3-stage2", 64)):
        up = resolved[stage]["upstream"]["previous"]
        assert (up["stage"], up["fingerprint"]) == (previous, resolved[previous]["fingerprint"])
        model = resolved[stage]["recipe"]["model"]
        assert model["vision"]["image_size"] == size
        same_text = {**stage1["recipe"]["model"]["text"], "max_input_length": model["text"]["max_input_length"]}
        assert model["text"] == same_text
        assert model["text"]["max_input_length"] >= (size // 8) ** 2 + 96

    # stage 1 really started from the checkpoints: its ViT is frozen and is SigLIP's, bit for bit;
    # the encoder-decoder trained two small steps away from T5's weights
    weights = load_checkpoint(runs["pali3-stage1"] / "checkpoint")["model"]
    for k, v in load_pretrained_vit(str(siglip), with_head=False).state_dict().items():
        assert torch.equal(weights[f"vit.{k}"], v), k
    t5_weights = load_pretrained_encdec(str(t5)).state_dict()
    moved = {k: float((weights[f"encdec.{k}"] - v).abs().max()) for k, v in t5_weights.items()
             if "embed" not in k and "lm_head" not in k}
    assert moved and max(moved.values()) < 0.01, moved
    assert any(d > 0 for d in moved.values())  # it trained

    # the same command again: every stage from the cache; a later stage alone finds the same chain
    code, out, err = _main("--recipe", "all", "--preset", "smoke", *init, *SMALL)
    assert code == 0, err
    assert out.count("loaded from cache") == 3, out
    code, out, err = _main("--recipe", "pali3-transfer", "--preset", "smoke", *init, *SMALL)
    assert code == 0, err
    assert out.count("loaded from cache") == 1 and str(runs["pali3-transfer"]) in out, out
    assert get_recipe("pali3-stage1", stage1["preset"]).fingerprint() == stage1["fingerprint"]


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "all", "--init", "siglip=a/b"], "--init needs both towers: add t5=..."),
    (["--recipe", "all", "--init", "siglip=a/b", "vit=c/d"], "write siglip=PATH_OR_HUB_ID t5=PATH_OR_HUB_ID"),
    (["--recipe", "all", "--init", "siglip=a/b", "siglip=c/d", "t5=e/f"], "names siglip twice"),
    (["--recipe", "ul2", "--init", "siglip=a/b", "t5=c/d"], "the ul2 stage trains from scratch"),
    (["--recipe", "pali3-stage1", "--init", "siglip=./no-such-folder", "t5=./no-such-folder"],
     "--init: no checkpoint folder at './no-such-folder'"),
])
def test_bad_init_gives_clear_errors(data, argv, message):
    code, out, err = _main(*argv, "--preset", "smoke")
    assert code == 2 and message in err, err
    assert "Traceback" not in err
