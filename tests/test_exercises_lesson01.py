"""Lesson 01's exercise checks: the solution passes, each usual mistake gets the hint that names
its real cause, a stub gets "your turn", and the checks use explicit raises (not bare asserts)."""

from __future__ import annotations

import math

import pytest

from pali3_edu.exercises import ExerciseNotDone
from pali3_edu.exercises.lesson01 import check_encode_box, check_tokenizer_roundtrip

# --------------------------------------------------------------------------------------------
# check_encode_box
# --------------------------------------------------------------------------------------------


def encode_correct(box):
    y0, x0, y1, x1 = box
    return "".join(f"<loc{round(v * 1023):04d}>" for v in (y0, x0, y1, x1))


def encode_half_up(box):  # int(v * 1023 + 0.5) is also right (no value is exactly on an edge)
    return "".join(f"<loc{int(v * 1023 + 0.5):04d}>" for v in box)


def encode_x_first(box):
    y0, x0, y1, x1 = box
    return "".join(f"<loc{round(v * 1023):04d}>" for v in (x0, y0, x1, y1))


def encode_corners_mixed(box):
    y0, x0, y1, x1 = box
    return "".join(f"<loc{round(v * 1023):04d}>" for v in (y0, y1, x0, x1))


def encode_1024_bins(box):
    return "".join(f"<loc{min(int(v * 1024), 1023):04d}>" for v in box)


def encode_truncated(box):
    return "".join(f"<loc{int(v * 1023):04d}>" for v in box)


def encode_ceil(box):
    return "".join(f"<loc{math.ceil(v * 1023):04d}>" for v in box)


def encode_no_padding(box):
    return "".join(f"<loc{round(v * 1023)}>" for v in box)


def encode_spaces(box):
    return " ".join(f"<loc{round(v * 1023):04d}>" for v in box)


def encode_list(box):
    return [f"<loc{round(v * 1023):04d}>" for v in box]


def encode_none(box):
    "".join(f"<loc{round(v * 1023):04d}>" for v in box)


def encode_float_format(box):
    return "".join(f"<loc{v * 1023:04d}>" for v in box)


def encode_bad_unpack(box):
    (_y0, _x0), (_y1, _x1) = box
    return ""


def encode_stub(box):
    raise NotImplementedError("✏️ Your turn: write encode_stub — then run the check cell below.")


def encode_three_tokens(box):
    return "".join(f"<loc{round(v * 1023):04d}>" for v in box[:3])


@pytest.mark.parametrize("fn", [encode_correct, encode_half_up])
def test_check_encode_box_accepts_the_solution(fn, capsys):
    check_encode_box(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (encode_x_first, "y before x"),
        (encode_corners_mixed, "one corner, then the other"),
        (encode_1024_bins, r"you used v \* 1024"),
        (encode_truncated, "int\\(\\) truncates"),
        (encode_ceil, "math.ceil rounds every value up"),
        (encode_no_padding, "zero-padded"),
        (encode_spaces, "no spaces"),
        (encode_list, "join them into one string"),
        (encode_none, "end your function with `return"),
        (encode_float_format, "must be an int before"),
        (encode_bad_unpack, "unpack it with `y0, x0, y1, x1 = box`"),
        (encode_three_tokens, "exactly 4 tokens"),
    ],
)
def test_check_encode_box_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint: .*{hint}"):
        check_encode_box(fn)


def test_a_stub_gets_your_turn_not_a_traceback():
    with pytest.raises(ExerciseNotDone, match="Your turn: encode_stub is not written yet") as info:
        check_encode_box(encode_stub)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_an_exception_keeps_its_cause():
    with pytest.raises(AssertionError, match="raised ValueError") as info:
        check_encode_box(encode_float_format)
    assert isinstance(info.value.__cause__, ValueError)


def test_passing_the_result_instead_of_the_function():
    with pytest.raises(TypeError, match="without calling it"):
        check_encode_box(encode_correct((0.1, 0.2, 0.3, 0.4)))


# --------------------------------------------------------------------------------------------
# check_tokenizer_roundtrip
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    from pali3_edu.tokenizer import course_tokenizer

    return course_tokenizer()


class Wrapped:
    """The course tokenizer with one method changed."""

    def __init__(self, tok, **changes):
        self._tok, self._changes = tok, changes

    def __getattr__(self, name):
        return self._changes.get(name, getattr(self._tok, name))


def test_check_tokenizer_roundtrip_accepts_the_course_tokenizer(tok, capsys):
    check_tokenizer_roundtrip(tok)
    assert "✅" in capsys.readouterr().out


def test_tokenizer_without_eos(tok):
    no_eos = Wrapped(tok, encode=lambda text, add_eos=True: tok.encode(text, add_eos=False))
    with pytest.raises(AssertionError, match="(?s)should end with EOS.*Hint: append the end-of-sequence"):
        check_tokenizer_roundtrip(no_eos)


def test_tokenizer_that_loses_text(tok):
    lossy = Wrapped(tok, decode=lambda ids: tok.decode(ids).replace(" ", "  ", 1))
    with pytest.raises(AssertionError, match="(?s)round trip failed.*Hint: decode\\(encode"):
        check_tokenizer_roundtrip(lossy)


def test_tokenizer_that_splits_special_tokens(tok):
    def split_specials(text, add_eos=True):
        ids = tok.encode(text, add_eos=add_eos)
        return [*ids, ids[-1]] if text.startswith("<seg") and not add_eos else ids

    with pytest.raises(AssertionError, match="(?s)not one.*Hint: special tokens must be matched"):
        check_tokenizer_roundtrip(Wrapped(tok, encode=split_specials))


def test_tokenizer_with_sentinels_counting_up(tok):
    up = Wrapped(tok, token_to_id=lambda s: tok.vocab_size - 100 if s == "<extra_id_0>" else tok.token_to_id(s))
    with pytest.raises(AssertionError, match="(?s)<extra_id_0> has id .*Hint: T5's convention"):
        check_tokenizer_roundtrip(up)


def test_the_checks_do_not_rely_on_assert_statements():
    """`python -O` strips assert statements: a check must raise explicitly."""
    import ast
    import inspect

    from pali3_edu.exercises import lesson01

    tree = ast.parse(inspect.getsource(lesson01))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]


# --------------------------------------------------------------------------------------------
# The lessons 00, 01, 04, 05 and 07 as files: setup cell, exercise markers, no dependence on
# the learner's code after an exercise
# --------------------------------------------------------------------------------------------

LESSONS = ["00_welcome", "01_data_and_tokenizer", "04_siglip_training", "05_ul2_denoisers",
           "07_ul2_pretraining"]


def _lesson(name):
    from pathlib import Path

    import nbformat

    return nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", LESSONS)
def test_setup_cell_installs_this_release_on_colab(name):
    """The first code cell is pali3_edu.env.COLAB_SETUP_CELL (this release's tag, on Colab only
    what Colab lacks, no forced ipywidgets), then a restart hint inside the same except branch."""
    from pali3_edu import env

    setup = next(c for c in _lesson(name).cells if c.cell_type == "code").source
    assert setup.startswith(env.COLAB_SETUP_CELL), "regenerate the setup cell from env.COLAB_SETUP_CELL"
    assert env.COLAB_PACKAGE in setup and env.COLAB_TAG in setup
    rest = setup[len(env.COLAB_SETUP_CELL):]
    assert "Restart the runtime if pip upgraded packages" in rest
    inside_except = all(line.startswith("    ") for line in rest.splitlines() if line.strip())
    assert inside_except, "the hint belongs to the except branch"
    assert "ipywidgets" not in setup


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_metadata_is_what_jupyterlab_writes(name):
    nb = _lesson(name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["language_info"]["name"] == "python"
    assert "widgets" not in nb.metadata, "stale widget state: JupyterLab would rewrite it"
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5) and all("id" in c for c in nb.cells)


@pytest.mark.parametrize("name", LESSONS)
def test_exercises_are_marked_and_nothing_later_needs_them(name):
    """Each ✏️ EXERCISE cell has BEGIN/END SOLUTION markers around the body of a `my_…` function;
    a later cell uses that function only in the check or inside a try that catches
    NotImplementedError (the student copy's stub)."""
    import re

    cells = [c for c in _lesson(name).cells if c.cell_type == "code"]
    for i, cell in enumerate(cells):
        if "# ✏️ EXERCISE" not in cell.source:
            continue
        lines = cell.source.splitlines()
        assert sum("# BEGIN SOLUTION" in line for line in lines) == 1, cell.source
        assert sum("# END SOLUTION" in line for line in lines) == 1, cell.source
        fn = re.search(r"def (my_\w+)\(", cell.source).group(1)
        for later in cells[i + 1:]:
            for match in re.finditer(rf"\b{fn}\b(?=\s*\()|\b{fn}\b(?=\))", later.source):
                before = later.source[: match.start()]
                in_check = re.search(rf"check_\w+\({fn}\)", later.source[match.start() - 40: match.end() + 1])
                guarded = "try:" in before and "except NotImplementedError" in later.source[match.end():]
                assert in_check or guarded, f"{name}: a later cell calls {fn} unguarded:\n{later.source}"
