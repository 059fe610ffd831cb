"""The benchmark command line: argument checks and the denoisers benchmark's token layout.

No timings are asserted here (speed is what the benchmarks print, not what tests check).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pali3_edu.bench import denoisers as bench_denoisers
from pali3_edu.bench.__main__ import BENCHMARKS, check_counts, main
from pali3_edu.tokenizer import train_tokenizer
from pali3_edu.tokens import MODE_TOKENS, NUM_SENTINELS


@pytest.mark.parametrize("argv, option", [
    (["siglip", "--batch", "0"], "--batch"),
    (["siglip", "--batch", "256", "0"], "--batch"),
    (["siglip", "--batch=-4"], "--batch"),
    (["siglip", "--dim", "0"], "--dim"),
    (["siglip", "--chunks", "-1"], "--chunks"),
    (["siglip", "--batch", "two"], "--batch"),
    (["generate", "--batch", "0"], "--batch"),
    (["generate", "--new-tokens", "64", "0"], "--new-tokens"),
    (["generate", "--source-length", "0"], "--source-length"),
    (["generate", "--repeats", "0"], "--repeats"),
    (["denoisers", "--batch", "0"], "--batch"),
    (["denoisers", "--length", "-3"], "--length"),
    (["denoisers", "--seconds", "0"], "--seconds"),
    (["denoisers", "--seconds", "nan"], "--seconds"),
    (["data", "--num", "0"], "--num"),
    (["data", "--size", "0"], "--size"),
    (["data", "--max-objects", "0"], "--max-objects"),
    (["data", "--word-prob", "1.5"], "--word-prob"),
])
def test_bad_arguments_are_usage_errors(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2  # argparse's usage-error status, before any work is done
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "usage:" in err, err


@pytest.mark.parametrize("argv, message", [
    (["denoisers", "--length", "1"], "at least 2"),
    (["denoisers", "--preset", "no-such-preset"], "No preset"),
    (["data", "--size", "8"], "image_size"),
])
def test_values_the_benchmark_cannot_use_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_good_arguments_pass_the_central_check():
    check_counts("siglip", ["--batch", "1", "4096", "--dim", "8", "--device", "cpu"])
    check_counts("generate", ["--presets", "tiny-cpu", "--new-tokens", "1", "--batch", "1"])
    check_counts("data", ["--num", "0"])  # data checks its own options


def test_listing_and_unknown_benchmark(capsys):
    main(["--list"])
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)
    with pytest.raises(SystemExit, match="Unknown benchmark"):
        main(["nope"])


def test_command_line_exits_with_usage_error():
    """The real command, as a learner types it."""
    proc = subprocess.run([sys.executable, "-m", "pali3_edu.bench", "siglip", "--batch", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "positive integer" in proc.stderr, proc.stderr
    assert proc.stdout == ""  # no table of meaningless ratios


def test_denoisers_bench_ids_match_the_course_tokenizer_layout():
    """The benchmark's stand-in ids must be the course tokenizer's (they were once reversed)."""
    tok = train_tokenizer(["a red circle left of a blue square"] * 50, vocab_size=100)
    ids = bench_denoisers._Ids(tok.vocab_size)
    assert (ids.pad_id, ids.eos_id) == (tok.pad_id, tok.eos_id)
    for mode in MODE_TOKENS.values():
        assert ids.mode_id(mode) == tok.mode_id(mode), mode
    assert [ids.sentinel_id(i) for i in range(NUM_SENTINELS)] == tok.sentinel_ids
    with pytest.raises(ValueError):
        ids.sentinel_id(NUM_SENTINELS)
