"""Student copies (pali3_edu.student): solution blocks become "your turn" stubs, outputs go."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from pali3_edu import student
from pali3_edu.student import (
    SolutionMarkerError,
    make_student_notebook,
    student_source,
    write_student_copies,
)

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))

EXERCISE_CELL = '''\
# ✏️ EXERCISE: the hypotenuse
def my_hypot(a, b):
    """Length of the hypotenuse of a right triangle with legs a and b."""
    # BEGIN SOLUTION
    squares = a * a + b * b
    return math.sqrt(squares)
    # END SOLUTION


print("defined")'''

EXERCISE_CELL_STUDENT = '''\
# ✏️ EXERCISE: the hypotenuse
def my_hypot(a, b):
    """Length of the hypotenuse of a right triangle with legs a and b."""
    raise NotImplementedError("✏️ Your turn: write my_hypot — then run the check cell below.")


print("defined")'''

METHOD_CELL = '''\
class Model:
    def forward(self, x):
        y = x + 1
        # BEGIN SOLUTION
        if y > 0:
            return y
        return -y
        # END SOLUTION

    def name(self):
        return "model"'''

METHOD_CELL_STUDENT = '''\
class Model:
    def forward(self, x):
        y = x + 1
        raise NotImplementedError("✏️ Your turn: write forward — then run the check cell below.")

    def name(self):
        return "model"'''

TWO_BLOCKS_CELL = '''\
# ✏️ EXERCISE: two small functions
def double(x):
    # BEGIN SOLUTION
    return 2 * x
    # END SOLUTION

def triple(x):
    # BEGIN SOLUTION
    return 3 * x
    # END SOLUTION

check_numbers(double, triple)'''


def _notebook() -> nbformat.NotebookNode:
    v4 = nbformat.v4
    setup = v4.new_code_cell("import math\nx = 1", execution_count=3, metadata={"tags": ["setup"]},
                             outputs=[v4.new_output("stream", name="stdout", text="hello\n")])
    exercise = v4.new_code_cell(EXERCISE_CELL, execution_count=4,
                                outputs=[v4.new_output("stream", name="stdout", text="defined\n")])
    check = v4.new_code_cell("check_hypot(my_hypot)", execution_count=5,
                             outputs=[v4.new_output("execute_result", data={"text/plain": "5.0"},
                                                    execution_count=5)])
    plain_exercise = v4.new_code_cell("# ✏️ EXERCISE: no markers here\ndef f():\n    return 1")
    cells = [v4.new_markdown_cell("# Lesson\n\nSome text with `# BEGIN SOLUTION` in it."), setup, exercise,
             check, v4.new_code_cell(METHOD_CELL), v4.new_code_cell(TWO_BLOCKS_CELL), plain_exercise,
             v4.new_raw_cell("raw text")]
    nb = v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


# ---------------------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------------------


def test_stub_replaces_exactly_the_marked_lines():
    new, n = student_source(EXERCISE_CELL)
    assert n == 1
    assert new == EXERCISE_CELL_STUDENT


def test_stub_keeps_the_indentation_of_the_begin_marker():
    new, n = student_source(METHOD_CELL)
    assert n == 1
    assert new == METHOD_CELL_STUDENT


def test_every_block_of_a_cell_becomes_a_stub_and_names_its_function():
    new, n = student_source(TWO_BLOCKS_CELL)
    assert n == 2
    assert "return 2 * x" not in new and "return 3 * x" not in new
    assert "write double — then run this cell again to check it." in new  # the check is in this cell
    assert "write triple — then run this cell again to check it." in new
    assert new.endswith("check_numbers(double, triple)")


def test_stub_outside_a_function_is_named_after_the_exercise():
    src = "# ✏️ EXERCISE: build the mask\n# BEGIN SOLUTION\nmask = [1, 0]\n# END SOLUTION\nprint(mask)"
    new, _ = student_source(src)
    assert new == ('# ✏️ EXERCISE: build the mask\n'
                   'raise NotImplementedError("✏️ Your turn: write build the mask — then run the check cell below.")\n'
                   'print(mask)')


def test_quotes_in_the_exercise_title_stay_valid_python():
    src = '# ✏️ EXERCISE: the "answer" \\ loss\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION'
    new, _ = student_source(src)
    with pytest.raises(NotImplementedError, match=r'write the "answer" \\ loss'):
        exec(compile(new, "<cell>", "exec"), {})  # noqa: S102


def test_stub_raises_your_turn_and_the_solution_did_not():
    namespace: dict = {}
    exec(compile("import math\n" + EXERCISE_CELL, "<original>", "exec"), namespace)  # noqa: S102
    assert namespace["my_hypot"](3, 4) == 5.0  # the lesson's solution works ...
    new, _ = student_source(EXERCISE_CELL)
    namespace = {}
    exec(compile("import math\n" + new, "<student>", "exec"), namespace)  # noqa: S102
    assert namespace["my_hypot"].__doc__.startswith("Length of the hypotenuse")  # docstring kept
    with pytest.raises(NotImplementedError, match="✏️ Your turn: write my_hypot — then run the check cell below"):
        namespace["my_hypot"](3, 4)  # ... the student's copy says it is their turn

    namespace = {}
    exec(compile(student_source(METHOD_CELL)[0], "<student>", "exec"), namespace)  # noqa: S102
    model = namespace["Model"]()
    assert model.name() == "model"  # the rest of the class is untouched
    with pytest.raises(NotImplementedError, match="write forward"):
        model.forward(1)


def test_source_without_markers_is_unchanged():
    src = "def f(x):\n    return x  # BEGIN SOLUTION is only a comment here\n"
    assert student_source(src) == (src, 0)


@pytest.mark.parametrize(
    ("src", "line", "what"),
    [
        ("x = 1\n# END SOLUTION", 2, "without a '# BEGIN SOLUTION'"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1", 2, "never closed"),
        ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION", 3,
         "inside the block opened on line 2"),
    ],
)
def test_unbalanced_markers_are_a_clear_error(src, line, what):
    with pytest.raises(SolutionMarkerError, match=f"my cell, line {line}: .*{what}"):
        student_source(src, where="my cell")


def test_a_begin_marker_indented_wrongly_is_caught():
    src = "def f():\n# BEGIN SOLUTION\n    return 1\n# END SOLUTION\n"
    assert ast.parse(src)  # comments may sit anywhere: the lesson itself is valid Python
    with pytest.raises(SolutionMarkerError, match="no longer valid Python"):
        student_source(src)


def test_cells_with_ipython_magics_are_still_converted():
    src = "%matplotlib inline\ndef f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION"
    new, n = student_source(src)
    assert n == 1 and new.startswith("%matplotlib inline\ndef f():\n    raise NotImplementedError(")


# ---------------------------------------------------------------------------------------------
# A whole notebook
# ---------------------------------------------------------------------------------------------


def test_student_notebook_clears_outputs_and_leaves_other_cells_alone():
    nb = _notebook()
    original = nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))
    copy, stubs, notes = make_student_notebook(nb, name="lesson.ipynb")
    assert nb == original, "the lesson itself must not be modified"
    assert stubs == 4
    nbformat.validate(copy)
    assert len(copy.cells) == len(nb.cells)
    for before, after in zip(nb.cells, copy.cells):
        assert after.cell_type == before.cell_type
        assert after.metadata == before.metadata
        if after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None
        if before.source not in (EXERCISE_CELL, METHOD_CELL, TWO_BLOCKS_CELL):
            assert after.source == before.source  # markdown (even mentioning a marker), raw, plain code
    assert copy.cells[2].source == EXERCISE_CELL_STUDENT
    assert copy.cells[4].source == METHOD_CELL_STUDENT
    assert "widgets" not in copy.metadata and copy.metadata.kernelspec == nb.metadata.kernelspec
    assert len(notes) == 1 and "cell 6" in notes[0] and "no markers here" in notes[0]


def test_marker_errors_name_the_notebook_and_the_cell(tmp_path):
    nb = _notebook()
    nb.cells[3].source = "check_hypot(my_hypot)\n# END SOLUTION"
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "student"
    cell_id = nb.cells[3].id
    with pytest.raises(SolutionMarkerError, match=rf"lesson.ipynb: cell 3 \(id {cell_id}\), starting "
                                                  r"'check_hypot\(my_hypot\)', line 2"):
        write_student_copies([path], out)
    assert not out.exists(), "nothing is written when a notebook has bad markers"


def test_write_student_copies_and_the_command_line(tmp_path, capsys):
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    nbformat.write(_notebook(), lessons / "01_lesson.ipynb")
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "print(1)", execution_count=1, outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")])])
    nbformat.write(plain, lessons / "02_plain.ipynb")

    assert student.main([str(p) for p in sorted(lessons.glob("*.ipynb"))]) == 0
    out = lessons / "student"  # the default: next to the lessons
    shown = capsys.readouterr().out
    assert "4 solutions replaced by a stub" in shown and "no solution markers, outputs cleared" in shown
    first = nbformat.read(out / "01_lesson.ipynb", as_version=4)
    assert first.cells[2].source == EXERCISE_CELL_STUDENT
    second = nbformat.read(out / "02_plain.ipynb", as_version=4)
    assert second.cells[0].source == "print(1)" and second.cells[0].outputs == []

    other = tmp_path / "elsewhere"
    assert student.main(["--out", str(other), str(lessons / "02_plain.ipynb")]) == 0
    assert (other / "02_plain.ipynb").exists()


def test_refuses_to_overwrite_the_lessons(tmp_path, capsys):
    nbformat.write(_notebook(), tmp_path / "01_lesson.ipynb")
    before = (tmp_path / "01_lesson.ipynb").read_bytes()
    assert student.main(["--out", str(tmp_path), str(tmp_path / "01_lesson.ipynb")]) == 1
    assert "would overwrite the lesson itself" in capsys.readouterr().err
    assert (tmp_path / "01_lesson.ipynb").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="not a notebook"):
        write_student_copies([tmp_path / "missing.ipynb"], tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# The real lessons (whatever markers they have today); nothing is executed
# ---------------------------------------------------------------------------------------------


def _stub_raises(node: ast.AST) -> bool:
    """``raise NotImplementedError("✏️ Your turn: ...")``"""
    return (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
            and isinstance(node.exc.func, ast.Name) and node.exc.func.id == "NotImplementedError"
            and bool(node.exc.args) and isinstance(node.exc.args[0], ast.Constant)
            and "Your turn" in str(node.exc.args[0].value))


def _has_docstring(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = fn.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


@pytest.mark.skipif(not LESSONS, reason="no lessons in notebooks/")
def test_student_copies_of_the_lessons(tmp_path):
    copies = write_student_copies(LESSONS, tmp_path)
    assert [c.target.name for c in copies] == [p.name for p in LESSONS]
    for lesson, made in zip(LESSONS, copies):
        original = nbformat.read(lesson, as_version=4)
        copy = nbformat.read(made.target, as_version=4)
        nbformat.validate(copy)
        assert len(copy.cells) == len(original.cells)
        stubs = 0
        for index, (before, after) in enumerate(zip(original.cells, copy.cells)):
            where = f"{lesson.name} cell {index}"
            if after.cell_type == "code":
                assert after.outputs == [] and after.execution_count is None, where
            blocks = before.source.count(student.BEGIN_MARKER) if before.cell_type == "code" else 0
            if not blocks:
                assert after.source == before.source, where
                continue
            tree = ast.parse(after.source)  # exercise cells are plain Python
            functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            raises = [n for n in ast.walk(tree) if _stub_raises(n)]
            assert len(raises) == blocks, f"{where}: {blocks} solution blocks, {len(raises)} stubs"
            stubs += len(raises)
            for fn in functions:
                body_raises = [i for i, stmt in enumerate(fn.body) if _stub_raises(stmt)]
                if not body_raises:
                    continue
                first = body_raises[0]
                # the stub is reached: no statement before it in the body returns
                assert not any(isinstance(s, ast.Return) for s in fn.body[:first]), f"{where}: {fn.name}"
                if first == (1 if _has_docstring(fn) else 0):  # nothing runs before the stub: call it
                    module = ast.Module(body=[fn], type_ignores=[])
                    namespace: dict = {}
                    exec(compile(module, f"<{where}>", "exec"), namespace)  # noqa: S102
                    n_args = len(fn.args.posonlyargs) + len(fn.args.args) - len(fn.args.defaults)
                    with pytest.raises(NotImplementedError, match="Your turn"):
                        namespace[fn.name](*[None] * n_args)
        assert made.stubs == stubs, lesson.name
