"""The run's JSON Lines logs (training_log.jsonl, samples.jsonl): the one reader, appending, and cutting back.

A kill mid-write can leave a torn last line: readers skip it, and cutting back rewrites the file without it.
"""

import json
import math
import os

from pretraining.run_files import written_atomically


def read_jsonl(path: str):
    """The rows of a JSON Lines file; a torn line, as a kill mid-write leaves, is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def finite_or_none(value):
    """JSON has no NaN/Inf: a non-finite number is written as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def append_jsonl(path: str, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({key: finite_or_none(value) for key, value in row.items()}) + "\n")


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drop the rows logged after `last_step` (by a run that went on past the checkpoint it resumes from).

    The file is rewritten to a temporary name and swapped in, so a crash here loses nothing. A torn last
    line (a kill mid-write) is dropped too.
    """
    if not os.path.exists(path):
        return
    kept = [row for row in read_jsonl(path) if row.get("step", 0) <= last_step]
    with written_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
