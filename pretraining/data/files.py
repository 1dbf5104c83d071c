"""Local data files: which `datasets` builder reads them, and the cheap checks made before training.

A bad file is named with its path (and line, for JSON Lines) before anything is trained; a bad record deeper in a
file than the start-up check reads is named when training reaches it (`bad_record`).
"""

import glob
import json
import os
from itertools import islice

from pretraining.errors import DataError

# local file suffix -> `datasets` builder
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
# JSON Lines records checked before training; a bad record further on is named when training reaches it
CHECKED_RECORDS = 1000


def builder_for(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in LOCAL_BUILDERS:
        raise DataError(f"unsupported data file type {suffix or '(none)'!r} for {path} (use one of {', '.join(LOCAL_BUILDERS)})")
    return LOCAL_BUILDERS[suffix]


def expand_files(pattern: str | None) -> list[str]:
    """A path or a glob ('shards/*.parquet'): several files make several shards, split between ranks and
    DataLoader workers file by file."""
    if not pattern:
        return []
    return sorted(glob.glob(pattern)) or [pattern] if glob.has_magic(pattern) else [pattern]


def check_local_file(path: str, text_column: str) -> None:
    """Fail early, naming the file (and line), on what can be checked cheaply: the file exists, is readable and
    non-empty, and its first records (JSON Lines) or header (the other formats) hold the text column.

    Every rank runs this before the first step, so it does not parse a many-gigabyte file: a bad record deeper in
    is reported with its file and line when training reaches it (`bad_record`), the checkpoints intact.
    """
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    if not os.access(path, os.R_OK):
        raise DataError(f"data file not readable: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file is empty: {path}")
    try:
        check_contents(path, builder_for(path), text_column)
    except UnicodeDecodeError:
        raise DataError(f"data file is not UTF-8 text: {path}") from None


def check_contents(path: str, builder: str, text_column: str) -> None:
    if builder == "json":
        check_json_file(path, text_column)
    elif builder == "parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a broken file
            raise DataError(f"unreadable parquet file {path}: {err}") from None
        if parquet.metadata.num_rows == 0:
            raise DataError(f"data file has no rows: {path}")
        check_columns(path, parquet.schema_arrow.names, text_column)
        check_parquet_text(path, parquet, text_column)
    elif builder == "csv":
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
            if next(f, None) is None:
                raise DataError(f"data file has no rows: {path}")
        check_columns(path, header, text_column)
    elif builder == "text":
        with open(path, encoding="utf-8") as f:
            if not any(line.strip() for line in f):
                raise DataError(f"data file has no text: {path}")


def check_json_file(path: str, text_column: str, limit: int | None = CHECKED_RECORDS) -> None:
    """Checks the first `limit` records of a JSON Lines file (None: all); a JSON array file is parsed whole."""
    with open(path, encoding="utf-8") as f:
        is_array = f.read(1) == "["  # a JSON array file rather than JSON Lines
        f.seek(0)
        if is_array:
            try:
                records = enumerate(json.load(f), start=1)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON in {path} at line {err.lineno}: {err.msg}") from None
            where = "record"
        else:
            records = islice(json_lines(f, path), limit)
            where = "line"
        count = 0
        for number, record in records:
            if not isinstance(record, dict):
                raise DataError(f"invalid JSON in {path} at {where} {number}: expected an object, got {type(record).__name__}")
            check_columns(f"{path} {where} {number}", list(record), text_column)
            check_text(f"{path} {where} {number}", record[text_column], text_column)
            count += 1
    if count == 0:
        raise DataError(f"data file has no records: {path}")


def json_lines(lines, path: str):
    """(line number, record) for each non-blank line, streaming: a file of any size is checked in constant memory."""
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON in {path} at line {lineno}: {err.msg}") from None


def check_columns(where: str, columns: list[str], text_column: str) -> None:
    if text_column not in columns:
        raise DataError(f"text column {text_column!r} not found in {where} (columns: {', '.join(map(str, columns)) or 'none'})")


def check_text(where: str, value, text_column: str) -> None:
    """A document's text must be a string (an empty one is skipped, see tokenize.py)."""
    if not isinstance(value, str):
        kind = ("null" if value is None else "a boolean" if isinstance(value, bool)
                else "a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}")
        raise DataError(f"{where}: the text column {text_column!r} holds {kind}, not a string")


def check_parquet_text(path: str, parquet, text_column: str) -> None:
    """The text column's type, and its nulls from each row group's statistics (metadata only: the whole file is
    checked without reading it); a row group without statistics is checked when training reads it."""
    import pyarrow as pa

    field = parquet.schema_arrow.field(text_column)
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        raise DataError(f"{path}: the text column {text_column!r} holds {field.type} values, not strings")
    column = parquet.schema_arrow.get_field_index(text_column)
    for group in range(parquet.metadata.num_row_groups):
        statistics = parquet.metadata.row_group(group).column(column).statistics
        if statistics is not None and statistics.has_null_count and statistics.null_count:
            raise DataError(f"{path} row group {group}: the text column {text_column!r} holds "
                            f"{statistics.null_count} null(s), not strings")


def find_bad_parquet_row(path: str, text_column: str) -> None:
    """Raises the DataError naming the first row (and row group) whose text is not a string."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for group in range(parquet.metadata.num_row_groups):
        for row, value in enumerate(parquet.read_row_group(group, columns=[text_column]).column(0).to_pylist()):
            check_text(f"{path} row group {group} row {row}", value, text_column)


def find_bad_csv_row(path: str, text_column: str) -> None:
    """Raises the DataError naming the first line whose text is empty (read as null) or missing."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
            check_text(f"{path} line {number}", row.get(text_column) or None, text_column)


def bad_record(files: list[str], text_column: str, error: Exception) -> DataError:
    """The error for a record that could not be read or tokenized mid-training: the file and line (row group and
    row for parquet) when a full check of the files finds it (paid only when reading failed), else the reader's
    own message."""
    finders = {"json": lambda path, column: check_json_file(path, column, limit=None), "parquet": find_bad_parquet_row,
               "csv": find_bad_csv_row}
    for path in files:
        try:
            finders.get(builder_for(path), lambda *_: None)(path, text_column)
        except DataError as found:
            return found
    return unreadable(", ".join(files), error)


def unreadable(source: str, error: Exception) -> DataError:
    """The error for a document of `source` (a Hub dataset, or files whose full check found nothing) that could not
    be read or tokenized."""
    return DataError(f"cannot read a document of the training data ({source}): {str(error).splitlines()[0]}")
