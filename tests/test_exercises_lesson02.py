"""Lesson 02's exercise checks: the correct solutions pass, and each usual mistake (subtle and
gross) gets the hint that names its real cause. Also: the lesson notebooks of 02, 03 and 06 start
with the course's setup cell and mark their exercises for the student copies."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch
from einops import rearrange

from pali3_edu.exercises import ExerciseNotDone
from pali3_edu.exercises.lesson02 import check_map_head, check_patchify

# --------------------------------------------------------------------------------------------
# Exercise 1: patchify
# --------------------------------------------------------------------------------------------


def patchify_einops(images, patch):
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=patch, p2=patch)


def patchify_reshape(images, patch):
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def patchify_channels_first(images, patch):  # subtle: right shape, unfold-style order
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=patch, p2=patch)


def patchify_columns_inside(images, patch):  # subtle: column by column inside a patch
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p2 p1 c)", p1=patch, p2=patch)


def patchify_column_major(images, patch):  # subtle: the patches column by column
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gw gh) (p1 p2 c)", p1=patch, p2=patch)


def patchify_unfold(images, patch):  # F.unfold gives (b, c·p·p, N): each patch channels-first
    return torch.nn.functional.unfold(images, patch, stride=patch).transpose(1, 2)


def patchify_transposed(images, patch):
    return rearrange(images, "b c (gh p1) (gw p2) -> b (p1 p2 c) (gh gw)", p1=patch, p2=patch)


def patchify_grid_kept(images, patch):
    return rearrange(images, "b c (gh p1) (gw p2) -> b gh gw (p1 p2 c)", p1=patch, p2=patch)


def patchify_flatten(images, patch):  # gross
    return images.flatten(1)


def patchify_channels_last_input(images, patch):  # treats the images as (b, h, w, c)
    return rearrange(images, "b (gh p1) (gw p2) c -> b (gh gw) (p1 p2 c)", p1=patch, p2=patch)


def patchify_fixed_channels(images, patch):  # right on RGB images only
    b, _, h, w = images.shape
    x = images.reshape(b, 3, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, -1, patch * patch * 3)


def patchify_scaled(images, patch):
    return patchify_einops(images, patch) / 2


def patchify_in_place(images, patch):
    images.mul_(1.0)
    images[0, 0, 0, 0] = 0.0
    return patchify_einops(images, patch)


def patchify_none(images, patch):
    patchify_einops(images, patch)


def patchify_numpy(images, patch):
    return patchify_einops(images, patch).numpy()


def patchify_stub(images, patch):
    raise NotImplementedError("✏️ Your turn: write patchify_stub — then run the check cell below.")


def patchify_typo(images, patch):
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p=patch)


@pytest.mark.parametrize("fn", [patchify_einops, patchify_reshape])
def test_check_patchify_accepts_the_solution(fn, capsys):
    check_patchify(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (patchify_channels_first, "channels-first, \\(c p1 p2\\)"),
        (patchify_columns_inside, "inside each patch you went column by column"),
        (patchify_column_major, "patches come column by column, \\(gw gh\\)"),
        (patchify_unfold, "channels-first, \\(c p1 p2\\)"),
        (patchify_transposed, "features come before the patches"),
        (patchify_grid_kept, "flatten the grid into one sequence axis"),
        (patchify_flatten, "expected \\(batch, N, patch·patch·C\\)"),
        (patchify_channels_last_input, "images are channels-first"),
        (patchify_fixed_channels, "depend on the image"),
        (patchify_scaled, "nothing is added or scaled"),
        (patchify_in_place, "changed the images in place"),
        (patchify_none, "returned None"),
        (patchify_numpy, "returned a ndarray, not a tensor"),
        (patchify_typo, "check the pattern"),
    ],
)
def test_check_patchify_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint) as info:
        check_patchify(fn)
    assert "\nHint: " in str(info.value)


def test_patchify_stub_says_your_turn():
    with pytest.raises(ExerciseNotDone, match="✏️ Your turn: patchify_stub"):
        check_patchify(patchify_stub)


def test_patchify_crash_keeps_its_cause():
    with pytest.raises(AssertionError) as info:
        check_patchify(patchify_typo)
    assert info.value.__cause__ is not None and "Hint:" in str(info.value)


def test_patchify_check_wants_the_function_not_its_result():
    with pytest.raises(TypeError, match="without calling it"):
        check_patchify(patchify_einops(torch.zeros(1, 3, 8, 8), 4))


def test_patchify_mistakes_are_told_apart():
    """No two recognised layouts give the same values on the check's inputs, and none is right."""
    from pali3_edu.exercises import lesson02
    from pali3_edu.vit import patchify

    inputs = lesson02._patch_inputs()
    flat = []
    for right, _ in lesson02._PATCH_MISTAKES:
        values = [rearrange(im, lesson02._GRID + right, p1=p, p2=p) for im, p in inputs]
        assert any(v.shape != patchify(im, p).shape or not torch.allclose(v, patchify(im, p))
                   for v, (im, p) in zip(values, inputs)), right
        flat.append(torch.cat([v.flatten() for v in values]))
    for i in range(len(flat)):
        for j in range(i):
            assert not torch.allclose(flat[i], flat[j]), (i, j)


# --------------------------------------------------------------------------------------------
# Exercise 2: the MAP head
# --------------------------------------------------------------------------------------------


def map_correct(tokens, head):
    probe = head.probe.expand(tokens.shape[0], -1, -1)
    x = head.attn(probe, context=tokens)
    x = x + head.mlp(head.norm(x))
    return x[:, 0]


def map_repeat(tokens, head):
    x = head.attn(head.probe.repeat(len(tokens), 1, 1), context=tokens)
    return (x + head.mlp(head.norm(x))).squeeze(1)


def map_no_residual(tokens, head):
    x = head.attn(head.probe.expand(tokens.shape[0], -1, -1), context=tokens)
    return head.mlp(head.norm(x))[:, 0]


def map_no_norm(tokens, head):  # subtle
    x = head.attn(head.probe.expand(tokens.shape[0], -1, -1), context=tokens)
    return (x + head.mlp(x))[:, 0]


def map_attention_only(tokens, head):
    return head.attn(head.probe.expand(tokens.shape[0], -1, -1), context=tokens)[:, 0]


def map_probe_residual(tokens, head):  # subtle: a residual around the attention
    probe = head.probe.expand(tokens.shape[0], -1, -1)
    x = probe + head.attn(probe, context=tokens)
    return (x + head.mlp(head.norm(x)))[:, 0]


def map_norm_tokens(tokens, head):  # subtle
    x = head.attn(head.probe.expand(tokens.shape[0], -1, -1), context=head.norm(tokens))
    return (x + head.mlp(head.norm(x)))[:, 0]


def map_probe_as_key(tokens, head):  # the roles of query and keys swapped
    x = head.attn(tokens, context=head.probe.expand(tokens.shape[0], -1, -1))
    return (x + head.mlp(head.norm(x)))[:, 0]


def map_probe_as_key_mean(tokens, head):
    x = head.attn(tokens, context=head.probe.expand(tokens.shape[0], -1, -1))
    return (x + head.mlp(head.norm(x))).mean(1)


def map_self_attention(tokens, head):
    x = head.attn(tokens)
    return (x + head.mlp(head.norm(x)))[:, 0]


def map_self_attention_mean(tokens, head):
    x = head.attn(tokens)
    return (x + head.mlp(head.norm(x))).mean(1)


def map_mean(tokens, head):  # gross
    return tokens.mean(1)


def map_max(tokens, head):  # gross
    return tokens.amax(1)


def map_keeps_axis(tokens, head):
    x = head.attn(head.probe.expand(tokens.shape[0], -1, -1), context=tokens)
    return x + head.mlp(head.norm(x))


def map_unexpanded(tokens, head):  # no expand: depends on how attention broadcasts
    x = head.attn(head.probe, context=tokens)
    return (x + head.mlp(head.norm(x)))[:, 0]


def map_probe_only(tokens, head):  # ignores the tokens
    probe = head.probe.expand(tokens.shape[0], -1, -1)
    x = head.attn(probe, context=probe)
    return (x + head.mlp(head.norm(x)))[:, 0]


def map_none(tokens, head):
    map_correct(tokens, head)


def map_stub(tokens, head):
    raise NotImplementedError("✏️ Your turn")


def map_wrong_keyword(tokens, head):
    return head.attn(query=head.probe, keys=tokens)


@pytest.mark.parametrize("fn", [map_correct, map_repeat])
def test_check_map_head_accepts_the_solution(fn, capsys):
    check_map_head(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (map_no_residual, "skipped the residual"),
        (map_no_norm, "skipped the LayerNorm"),
        (map_attention_only, "stopped after the attention"),
        (map_probe_residual, "added the probe back as a residual"),
        (map_norm_tokens, "applied head.norm to the tokens"),
        (map_probe_as_key, "probe must be the \\*query\\*"),
        (map_probe_as_key_mean, "probe must be the \\*query\\*"),
        (map_probe_only, "probe must be the \\*query\\*"),
        (map_self_attention, "self-attention over the tokens and kept the first one"),
        (map_self_attention_mean, "self-attention over the tokens and averaged"),
        (map_mean, "mean pooling"),
        (map_max, "max pooling"),
        (map_keeps_axis, "return x\\[:, 0\\]"),
        (map_none, "returned None"),
        (map_wrong_keyword, "head.attn\\(query, context=keys_and_values\\)"),
    ],
)
def test_check_map_head_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint) as info:
        check_map_head(fn)
    assert "\nHint: " in str(info.value)


def test_unexpanded_probe_is_right_or_explained(capsys):
    """Without expand the attention either broadcasts the probe (then the result is right) or
    raises; a raise must come with the 'expand the probe' hint."""
    try:
        check_map_head(map_unexpanded)
    except AssertionError as err:
        assert "expand" in str(err)
    else:
        assert "✅" in capsys.readouterr().out


def test_map_stub_says_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: map_stub"):
        check_map_head(map_stub)


def test_map_mistakes_are_told_apart():
    from pali3_edu.exercises import lesson02

    head, batches = lesson02._map_cases()
    with torch.no_grad():
        want = torch.cat([head(t).flatten() for t in batches])
        values = [torch.cat([m(t, head).flatten() for t in batches]) for m, _ in lesson02._MAP_MISTAKES]
    for i, v in enumerate(values):
        assert v.shape != want.shape or not torch.allclose(v, want, atol=1e-4), lesson02._MAP_MISTAKES[i][1]
        for j in range(i):
            assert v.shape != values[j].shape or not torch.allclose(v, values[j], atol=1e-4), (i, j)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_map_head(map_correct)
    check_patchify(patchify_einops)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------------------------
# The notebooks of lessons 02, 03 and 06: setup cell, exercise markers
# --------------------------------------------------------------------------------------------

LESSONS = ["02_vision_transformer", "03_sigmoid_loss", "06_encoder_decoder"]
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _lesson(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", LESSONS)
def test_setup_cell_is_the_course_setup_cell(name):
    from pali3_edu import env

    setup = next(c for c in _lesson(name).cells if c.cell_type == "code").source
    assert setup == env.COLAB_SETUP_CELL, "regenerate the setup cell from pali3_edu.env.COLAB_SETUP_CELL"


@pytest.mark.parametrize("name", LESSONS)
def test_exercises_are_marked_and_nothing_later_needs_them(name):
    """Each ✏️ EXERCISE cell has BEGIN/END SOLUTION markers inside a `my_…` function; a later cell
    uses that function only in its check or inside a try that catches NotImplementedError."""
    cells = [c for c in _lesson(name).cells if c.cell_type == "code"]
    exercises = 0
    for i, cell in enumerate(cells):
        if "# ✏️ EXERCISE" not in cell.source:
            continue
        exercises += 1
        lines = cell.source.splitlines()
        assert sum("# BEGIN SOLUTION" in line for line in lines) == 1, cell.source
        assert sum("# END SOLUTION" in line for line in lines) == 1, cell.source
        fn = re.search(r"def (my_\w+)\(", cell.source).group(1)
        for later in cells[i + 1:]:
            for match in re.finditer(rf"\b{fn}\b", later.source):
                in_check = re.search(rf"check_\w+\({fn}\)", later.source[max(0, match.start() - 40): match.end() + 1])
                guarded = ("try:" in later.source[: match.start()]
                           and "except NotImplementedError" in later.source[match.end():])
                assert in_check or guarded, f"{name}: a later cell calls {fn} unguarded:\n{later.source}"
    assert exercises >= 1


@pytest.mark.parametrize("name", LESSONS)
def test_student_copy_replaces_every_solution(name):
    from pali3_edu.student import make_student_notebook

    student, stubs, notes = make_student_notebook(_lesson(name), name)
    assert stubs >= 1 and not notes
    for cell in student.cells:
        if cell.cell_type == "code" and "# ✏️ EXERCISE" in cell.source:
            assert "raise NotImplementedError" in cell.source
            assert "BEGIN SOLUTION" not in cell.source


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_ends_with_questions_and_more_to_try(name):
    text = "\n".join(c.source for c in _lesson(name).cells if c.cell_type == "markdown")
    assert "## Questions" in text and "## More to try" in text
    assert "**Time:** see the README" in text  # no typed times in the header
