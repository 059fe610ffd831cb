"""The lesson list, the recorded lesson times and the README's lesson table agree."""

from __future__ import annotations

import json

import pytest

from pali3_edu import course


def test_every_notebook_is_a_listed_lesson():
    files = {p.name for p in course.NOTEBOOKS.glob("*.ipynb")}
    listed = {lesson.file for lesson in course.LESSONS}
    assert files <= listed, f"lessons missing from pali3_edu.course.LESSONS: {sorted(files - listed)}"


def test_readme_table_is_generated_from_the_record():
    readme = (course.ROOT / "README.md").read_text()
    assert course.readme_with_table(readme) == readme, (
        "The README's lesson table differs from the record: run `python -m pali3_edu.course readme`.")


def test_table_uses_recorded_times(tmp_path):
    record = {"machine": "a test machine", "date": "2026-01-01",
              "seconds": {lesson.file: 30.0 + i for i, lesson in enumerate(course.existing_lessons())}}
    path = tmp_path / "times.json"
    path.write_text(json.dumps(record))
    table = course.lesson_table(course.load_record(path))
    assert "a test machine" in table and "| 30 s |" in table


def test_readme_without_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        course.readme_with_table("# no table here")


def test_a_partial_re_recording_is_said_so(tmp_path, monkeypatch):
    """Re-recording some lessons must not leave the table claiming one fresh run of all of them."""
    import subprocess

    record = {"machine": "a test machine", "date": "2026-01-01",
              "seconds": {lesson.file: 30.0 for lesson in course.existing_lessons()}}
    path = tmp_path / "times.json"
    path.write_text(json.dumps(record))
    monkeypatch.setattr(course, "RECORD", path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: None)  # no notebook is executed
    monkeypatch.setattr(course, "strip_run_metadata", lambda p: None)
    first = course.existing_lessons()[0].number
    out = course.record_times([first], data=tmp_path / "data")
    table = course.lesson_table(out)
    assert f"Lesson {first} was re-recorded" in table and "one fresh run" not in table
    second = course.existing_lessons()[1].number
    out = course.record_times([second], data=tmp_path / "data")  # a later partial run adds to the note
    assert f"Lessons {first}, {second} were re-recorded" in course.lesson_table(out)
    out = course.record_times()  # a full run from an empty folder: the plain note again
    assert "note" not in out and "partial" not in out and "one fresh run" in course.lesson_table(out)


def test_a_failed_lesson_is_not_said_to_be_re_recorded(tmp_path, monkeypatch):
    """Recording stops at a lesson that fails: the ones after it (and it) keep their old time, and
    the note must not name them as re-recorded."""
    import subprocess

    lessons = course.existing_lessons()
    record = {"machine": "a test machine", "date": "2026-01-01", "seconds": {x.file: 30.0 for x in lessons}}
    path = tmp_path / "times.json"
    path.write_text(json.dumps(record))
    monkeypatch.setattr(course, "RECORD", path)
    monkeypatch.setattr(course, "strip_run_metadata", lambda p: None)

    def run(cmd, **kwargs):
        if cmd[-1].endswith(lessons[1].file):
            raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(subprocess.CalledProcessError):
        course.record_times([x.number for x in lessons[:3]], data=tmp_path / "data")
    out = course.load_record(path)
    assert list(out["partial"]) == [lessons[0].number]
    assert out["seconds"][lessons[1].file] == 30.0 and out["seconds"][lessons[2].file] == 30.0
    assert f"Lesson {lessons[0].number} was re-recorded" in course.lesson_table(out)


def test_recording_with_cached_runs_warns(tmp_path, monkeypatch):
    """A prepared data folder may hold the run a recorded lesson should train: say so."""
    import subprocess

    monkeypatch.setattr(course, "RECORD", tmp_path / "times.json")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(course, "strip_run_metadata", lambda p: None)
    (tmp_path / "data" / "runs" / "pali3-transfer-tiny-cpu").mkdir(parents=True)
    with pytest.warns(UserWarning, match="pali3-transfer-tiny-cpu"):
        course.record_times([course.existing_lessons()[0].number], data=tmp_path / "data")
