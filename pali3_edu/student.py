"""Student copies of the lessons: every exercise's solution replaced by a "your turn" stub.

The lessons ship with a working solution in each exercise cell, so that they run from top to
bottom (and in the tests). The solution sits between two marker lines::

    # ✏️ EXERCISE: write the <loc> encoder
    def my_encode_box(box):
        \"\"\"(y0, x0, y1, x1) in [0, 1] -> four <locNNNN> tokens.\"\"\"
        # BEGIN SOLUTION
        y0, x0, y1, x1 = box
        return "".join(f"<loc{round(v * 1023):04d}>" for v in (y0, x0, y1, x1))
        # END SOLUTION

``python -m pali3_edu.student [--out notebooks/student] [notebooks ...]`` writes a copy of every
lesson in which the marked lines, markers included, become one line at the indentation of
``# BEGIN SOLUTION``::

        raise NotImplementedError("✏️ Your turn: write my_encode_box — then run the check cell below.")

The function's signature and docstring (outside the markers) stay. All outputs are cleared.
Everything else is copied unchanged; a lesson without markers is copied with its outputs cleared
(and a note when one of its ``# ✏️ EXERCISE`` cells has no markers, so its solution stays).
Markers that do not pair up (an END without a BEGIN, a BEGIN without an END, a BEGIN inside
another) are an error naming the notebook, the cell and the line.

Without arguments it reads ``notebooks/*.ipynb`` and writes ``notebooks/student/``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "EXERCISE_MARKER",
    "SolutionMarkerError",
    "StudentCopy",
    "main",
    "make_student_notebook",
    "student_source",
    "write_student_copies",
]

BEGIN_MARKER = "# BEGIN SOLUTION"
END_MARKER = "# END SOLUTION"
EXERCISE_MARKER = "# ✏️ EXERCISE"

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b")
_END = re.compile(r"^[ \t]*#\s*END SOLUTION\b")
_EXERCISE = re.compile(r"^[ \t]*#\s*✏️\s*EXERCISE\b[\s:—–-]*(?P<title>.*)$")
_DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?def[ \t]+(?P<name>\w+)")
_CHECK_CALL = re.compile(r"\bcheck_\w+\s*\(")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class SolutionMarkerError(ValueError):
    """``# BEGIN SOLUTION`` / ``# END SOLUTION`` markers that do not pair up, or a stub that does
    not fit where the markers put it."""


def _what(lines: list[str], begin: int, indent: str) -> str:
    """What the learner writes: the function around line ``begin``, else the exercise's title."""
    for line in reversed(lines[:begin]):
        m = _DEF.match(line)
        if m and len(m.group("indent").expandtabs()) < len(indent.expandtabs()):
            return m.group("name")
    for line in lines:
        m = _EXERCISE.match(line)
        if m and m.group("title").strip():
            return m.group("title").strip()
    return "the solution"


def _stub(indent: str, what: str, check_here: bool) -> str:
    then = "then run this cell again to check it" if check_here else "then run the check cell below"
    message = f"✏️ Your turn: write {what} — {then}."
    literal = '"' + message.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{indent}raise NotImplementedError({literal})"


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def student_source(source: str, where: str = "this cell") -> tuple[str, int]:
    """Replace each ``# BEGIN SOLUTION`` … ``# END SOLUTION`` block of a code cell by a stub.

    Returns ``(new_source, number_of_blocks)``; a source without markers comes back unchanged.
    ``where`` names the cell in error messages. Raises :class:`SolutionMarkerError` for markers
    that do not pair up, and when the cell parsed as Python before but not after the change (a
    ``# BEGIN SOLUTION`` indented differently from the code it replaces).
    """
    lines = source.split("\n")
    out: list[str] = []
    blocks = 0
    begin: int | None = None
    for i, line in enumerate(lines):
        if _BEGIN.match(line):
            if begin is not None:
                raise SolutionMarkerError(
                    f"{where}, line {i + 1}: '{BEGIN_MARKER}' inside the block opened on line "
                    f"{begin + 1}. Close each solution with '{END_MARKER}' before the next one starts."
                )
            begin = i
        elif _END.match(line):
            if begin is None:
                raise SolutionMarkerError(
                    f"{where}, line {i + 1}: '{END_MARKER}' without a '{BEGIN_MARKER}' above it. Each "
                    "solution sits between one BEGIN and one END line in the same cell."
                )
            indent = _BEGIN.match(lines[begin]).group("indent")  # type: ignore[union-attr]
            check_here = bool(_CHECK_CALL.search("\n".join(lines[i + 1:])))
            out.append(_stub(indent, _what(lines, begin, indent), check_here))
            blocks += 1
            begin = None
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise SolutionMarkerError(
            f"{where}, line {begin + 1}: '{BEGIN_MARKER}' is never closed. Add '{END_MARKER}' after the "
            "last line of the solution, in the same cell."
        )
    new = "\n".join(out)
    if blocks and _parses(source) and not _parses(new):
        raise SolutionMarkerError(
            f"{where}: without its solution the cell is no longer valid Python. Indent "
            f"'{BEGIN_MARKER}' like the first line of the solution it replaces (the stub takes its "
            "indentation), and keep the function's signature and docstring outside the markers."
        )
    return new, blocks


def _describe_cell(name: str, index: int, cell: Any) -> str:
    first = next((ln.strip() for ln in cell.source.split("\n") if ln.strip()), "")
    ident = f" (id {cell['id']})" if cell.get("id") else ""
    shown = first if len(first) <= 60 else first[:57] + "…"
    return f"{name}: cell {index}{ident}, starting {shown!r}"


@dataclass
class StudentCopy:
    """One written student copy: where from, where to, how many solutions were stubbed."""

    source: Path
    target: Path
    stubs: int
    notes: list[str] = field(default_factory=list)


def make_student_notebook(nb: Any, name: str = "notebook") -> tuple[Any, int, list[str]]:
    """The student version of ``nb`` (an ``nbformat`` notebook; not modified).

    Returns ``(student_notebook, number_of_stubs, notes)``. Every code cell's solution blocks
    become stubs and every output is cleared (outputs, execution counts, and saved widget views in
    the notebook's metadata); all else stays as it was. ``notes`` names exercise cells
    (``# ✏️ EXERCISE``) without markers, whose solution therefore stays in the copy.
    """
    student = copy.deepcopy(nb)
    stubs = 0
    notes: list[str] = []
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        where = _describe_cell(name, index, cell)
        new, n = student_source(cell.source, where)
        if n:
            cell.source = new
            stubs += n
        elif any(_EXERCISE.match(line) for line in cell.source.split("\n")):
            notes.append(f"{where} is an exercise without '{BEGIN_MARKER}' / '{END_MARKER}' "
                         "markers: its solution stays in the student copy.")
        cell.outputs = []
        cell.execution_count = None
    student.metadata.pop("widgets", None)  # saved widget views are outputs too
    return student, stubs, notes


def write_student_copies(notebooks: Iterable[str | Path], out_dir: str | Path) -> list[StudentCopy]:
    """Write the student copy of each notebook into ``out_dir`` (same file names).

    Every notebook is converted (and checked) before anything is written, so a marker error
    leaves ``out_dir`` as it was. Refuses to write over a lesson itself.
    """
    import nbformat

    out = Path(out_dir)
    sources = [Path(p) for p in notebooks]
    if not sources:
        raise ValueError("No notebooks given: name the lessons, e.g. notebooks/*.ipynb.")
    done: list[tuple[StudentCopy, Any]] = []
    for src in sources:
        if src.suffix != ".ipynb" or not src.is_file():
            raise FileNotFoundError(f"{src} is not a notebook file (.ipynb).")
        target = out / src.name
        if target.resolve() == src.resolve():
            raise ValueError(f"The student copy of {src} would overwrite the lesson itself: choose another "
                             "--out folder (the default is notebooks/student).")
        nb = nbformat.read(src, as_version=4)
        student, stubs, notes = make_student_notebook(nb, name=str(src))
        nbformat.validate(student)
        done.append((StudentCopy(src, target, stubs, notes), student))
    out.mkdir(parents=True, exist_ok=True)
    for result, student in done:
        nbformat.write(student, result.target)
    return [result for result, _ in done]


def _default_notebooks() -> Path:
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else _REPO_ROOT / "notebooks"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pali3_edu.student [--out DIR] [notebooks ...]``; exit status 0, or 1 on an error."""
    parser = argparse.ArgumentParser(
        prog="python -m pali3_edu.student",
        description="Write student copies of the lessons: each '# BEGIN SOLUTION' … '# END SOLUTION' "
                    "block becomes a stub that raises NotImplementedError, and all outputs are cleared.",
    )
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="lessons to convert (default: every notebooks/*.ipynb)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the copies (default: notebooks/student next to the lessons)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(_default_notebooks().glob("*.ipynb"))
    if not notebooks:
        print(f"No lessons found in {_default_notebooks()}: run this in the repository root, or name "
              "the notebooks.", file=sys.stderr)
        return 1
    out = args.out if args.out is not None else Path(notebooks[0]).parent / "student"
    try:
        copies = write_student_copies(notebooks, out)
    except (SolutionMarkerError, ValueError, FileNotFoundError) as e:
        print(f"❌ {e}", file=sys.stderr)
        return 1
    for c in copies:
        what = f"{c.stubs} solution{'s' if c.stubs != 1 else ''} replaced by a stub" if c.stubs \
            else "no solution markers, outputs cleared"
        print(f"{c.source} → {c.target}: {what}")
        for note in c.notes:
            print(f"   note: {note}")
    total = sum(c.stubs for c in copies)
    print(f"✅ {len(copies)} student notebooks in {out} ({total} exercises to write).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
