"""The course's lessons in one place, and their measured times.

``LESSONS`` lists every lesson (number, file, what you build). Lesson times are never typed into a
text: ``python -m pali3_edu.course record`` executes every lesson from an empty data folder (as a
learner's first run does: datasets, tokenizer and models are built), times each one, and writes
the record ``notebooks/lesson_times.json`` (machine, date, seconds per lesson).
``python -m pali3_edu.course readme`` then rewrites the README's lesson table from that record
(between the ``<!-- lessons:start -->`` and ``<!-- lessons:end -->`` markers); the test suite
checks that the two agree.

    python -m pali3_edu.course record            # minutes: runs every lesson
    python -m pali3_edu.course record 09 10      # only these lessons (others keep their times)
    python -m pali3_edu.course readme            # README table from the record
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
RECORD = NOTEBOOKS / "lesson_times.json"
START, END = "<!-- lessons:start -->", "<!-- lessons:end -->"


@dataclass(frozen=True)
class Lesson:
    number: str
    file: str
    builds: str


LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "00_welcome.ipynb", "course map, environment check, device choice, ShapesWorld preview"),
    Lesson("01", "01_data_and_tokenizer.ipynb",
           "ShapesWorld as `datasets`, PaLI prompt formats, the `<loc>` codec, a SentencePiece tokenizer"),
    Lesson("02", "02_vision_transformer.ipynb",
           "patches, position embeddings, pre-LN blocks, the MAP head; a small shape classifier"),
    Lesson("03", "03_sigmoid_loss.ipynb", "softmax vs sigmoid loss, its init, chunked and multi-process versions"),
    Lesson("04", "04_siglip_training.ipynb",
           "SigLIP contrastive training, zero-shot classification, retrieval, sigmoid vs softmax over batch sizes"),
    Lesson("05", "05_ul2_denoisers.ipynb", "span corruption, the R/S/X denoisers and mode tokens"),
    Lesson("06", "06_encoder_decoder.ipynb",
           "RMSNorm, relative position buckets, gated-GELU, cross-attention, the KV cache"),
    Lesson("07", "07_ul2_pretraining.ipynb", "mixture-of-denoisers pretraining; greedy, beam and sampled decoding"),
    Lesson("08", "08_pali3_model.ipynb",
           "the projector, visual tokens + prompt into the encoder, the answer-only loss, the full forward, "
           "a linear probe of what the patch tokens carry"),
    Lesson("09", "09_stage1_multimodal.ipynb",
           "stage 1: the task mixture with a frozen ViT, per-task evaluation, a shipped run 13× longer, the "
           "SigLIP-vs-random ablation over three seeds"),
    Lesson("10", "10_stage2_resolution.ipynb",
           "stage 2: position-embedding interpolation, cost of resolution, fine-tuning at 128 px"),
    Lesson("11", "11_transfer_and_evaluation.ipynb",
           "transfer to referring expressions (and a shipped longer transfer that reaches the box goals), "
           "final evaluation on held-out and compositional splits"),
    Lesson("12", "12_gpu_scale_run.ipynb",
           "the whole recipe at GPU scale: presets, bf16, compile, throughput and MFU; smoke size on CPU"),
)


def existing_lessons() -> list[Lesson]:
    return [lesson for lesson in LESSONS if (NOTEBOOKS / lesson.file).exists()]


def _format_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def load_record(path: Path | None = None) -> dict:
    """The recorded run (``{"machine", "date", "seconds": {file: s}}``, ``"partial"`` after a partial
    re-recording: lesson number → when and how) from ``path`` (default: ``RECORD``), or an empty one."""
    path = RECORD if path is None else path
    if not path.exists():
        return {"machine": None, "date": None, "seconds": {}}
    return json.loads(path.read_text())


def lesson_table(record: dict | None = None) -> str:
    """The README's lesson table (Markdown) with the recorded CPU times."""
    record = record if record is not None else load_record()
    times = record.get("seconds", {})
    rows = ["| # | notebook | what you build | CPU |", "|---|---|---|---|"]
    for lesson in existing_lessons():
        t = times.get(lesson.file)
        rows.append(f"| {lesson.number} | [`{lesson.file}`](notebooks/{lesson.file}) | {lesson.builds} | "
                    f"{_format_seconds(t) if t is not None else '–'} |")
    machine, date = record.get("machine"), record.get("date")
    total = sum(times.get(lesson.file, 0.0) for lesson in existing_lessons())
    if not machine:
        note = "\nNo recorded run yet: `python -m pali3_edu.course record` measures the times."
    elif record.get("partial"):  # some lessons were re-recorded after the last full run
        note = (f"\nCPU: wall-clock time of each lesson on {machine}; {_format_seconds(total)} for all of them. "
                f"{_partial_note(record['partial'])} Recorded by `python -m pali3_edu.course record`.")
    else:
        note = (f"\nCPU: wall-clock time of each lesson in one fresh run (empty `data/`, so datasets, tokenizer "
                f"and models are built), on {machine}, {date}; {_format_seconds(total)} for all of them. "
                "Recorded by `python -m pali3_edu.course record`.")
    return "\n".join(rows) + "\n" + note


def readme_with_table(readme: str, record: dict | None = None) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"The README has no {START} … {END} markers around its lesson table.")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{lesson_table(record)}\n{END}{tail}"


def strip_run_metadata(path: Path) -> None:
    """Drop what an executed notebook carries that JupyterLab would not write (widget state,
    per-cell execution timings), so that opening a lesson does not mark it modified.
    (nbclient's ``store_widget_state=False`` fails on notebooks with Output widgets.)"""
    nb = json.loads(path.read_text())
    nb.get("metadata", {}).pop("widgets", None)
    nb.setdefault("metadata", {}).setdefault("kernelspec", {})["display_name"] = "Python 3 (ipykernel)"
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("execution", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _machine() -> str:
    cores = os.cpu_count()
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} GPU"
    except ImportError:
        pass
    return f"a {cores}-core CPU ({platform.machine()})"


def _partial_note(partial: dict[str, str]) -> str:
    """The README's note for lessons re-recorded after the last full run: ``partial`` maps a
    lesson number to when and how it was recorded."""
    groups: dict[str, list[str]] = {}
    for number, when in sorted(partial.items()):
        groups.setdefault(when, []).append(number)
    parts = []
    for i, (when, numbers) in enumerate(groups.items()):
        one = len(numbers) == 1
        verb = "" if i else ("was" if one else "were") + " re-recorded "
        parts.append(f"{'lesson' if one else 'lessons'} {', '.join(numbers)} {verb}{when}")
    note = "; ".join(parts)
    return note[0].upper() + note[1:] + "; the others come from the last full run from an empty data folder."


def record_times(numbers: list[str] | None = None, timeout: int = 3600, data: Path | None = None) -> dict:
    """Execute lessons (all, or those numbered in ``numbers``) in order, from an empty data folder
    shared by them (later lessons use what earlier ones cached, as in a learner's first run), and
    write their wall times into the record. Stored outputs are refreshed in place.

    ``data``: use (and keep) this data folder instead of a temporary one — e.g. to re-run one
    lesson after the others with their caches in place (its time then excludes upstream training).
    """
    chosen = [lesson for lesson in existing_lessons() if not numbers or lesson.number in numbers]
    record = load_record()
    keep = data is not None
    data = Path(data) if keep else Path(tempfile.mkdtemp(prefix="pali3-edu-record-"))
    data.mkdir(parents=True, exist_ok=True)
    cached = sorted(p.name for p in (data / "runs").glob("*") if p.is_dir())
    if cached:  # a lesson loads these instead of training them, and its recorded time shrinks
        warnings.warn(f"{data / 'runs'} already holds {', '.join(cached)}: a recorded lesson loads these "
                      "runs instead of training them. Delete the ones a recorded lesson should train.",
                      stacklevel=2)
    record["machine"] = _machine()
    record["date"] = _dt.date.today().isoformat()
    full = len(chosen) == len(existing_lessons()) and not keep
    how = ("with a prepared data folder (the caches of earlier lessons in place)" if keep
           else "from an empty data folder")
    env = dict(os.environ, PALI3_EDU_DATA=str(data))
    try:
        for lesson in chosen:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--inplace", f"--ExecutePreprocessor.timeout={timeout}", str(NOTEBOOKS / lesson.file)],
                           check=True, env=env)
            record["seconds"][lesson.file] = round(time.perf_counter() - t0, 1)
            strip_run_metadata(NOTEBOOKS / lesson.file)
            print(f"{lesson.file}: {_format_seconds(record['seconds'][lesson.file])}")
            # only a lesson that ran to the end is named in the note (a failed one keeps its old
            # time and outputs); every re-recording since the last full run is kept
            partial = dict(record.get("partial", {}), **{lesson.number: f"on {record['date']} {how}"})
            record["partial"] = dict(sorted(partial.items()))  # the README note is made from it
            if full and lesson is chosen[-1]:
                record.pop("partial")  # one fresh run of every lesson: the plain note again
            RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")  # progress survives a stop
    finally:
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pali3_edu.course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="execute lessons and record their times")
    rec.add_argument("lessons", nargs="*", help="lesson numbers (default: all)")
    rec.add_argument("--data", type=Path, default=None, help="keep and reuse this data folder")
    sub.add_parser("readme", help="rewrite the README's lesson table from the record")
    sub.add_parser("table", help="print the lesson table")
    args = parser.parse_args(argv)
    if args.command == "record":
        record_times(args.lessons, data=args.data)
    elif args.command == "readme":
        path = ROOT / "README.md"
        path.write_text(readme_with_table(path.read_text()))
    else:
        print(lesson_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
