"""`--dataset_mixture SOURCE[@COLUMN]=WEIGHT ...`: the sources of a mixture, parsed once (`DataArguments`).

Nothing is read here: `sources.load_source` opens a source's stream, `pipeline.build_datasets` mixes them.
"""

import glob
import math
import os
from dataclasses import dataclass

from pretraining.data.files import LOCAL_BUILDERS, expand_files
from pretraining.errors import DataError

# the column that tags a mixture's documents with the index of their source (kept through tokenizing)
SOURCE_COLUMN = "source_index"


@dataclass
class MixtureSource:
    """One `SOURCE[@COLUMN]=WEIGHT` entry of `--dataset_mixture`."""

    name: str  # as the user wrote it, without the weight: the key in tokens_by_source and eval_loss/<name>
    weight: float  # normalized: the weights of a mixture sum to 1
    local_path: str | None  # a local file or glob; None for a Hub dataset
    dataset_name: str | None  # a Hub dataset, with its config
    dataset_config_name: str | None
    text_column: str

    @property
    def files(self) -> list[str]:
        """The local file or glob's files; [] for a Hub dataset."""
        return expand_files(self.local_path)


def parse_mixture(entries: list[str], text_column: str) -> list[MixtureSource]:
    """`SOURCE[@COLUMN]=WEIGHT` entries -> sources with normalized weights.

    SOURCE is a local file or glob (`data/code/*.parquet`; anything with a data file suffix, a glob character or a
    path that exists) or a Hub dataset with an optional config (`HuggingFaceTB/smollm-corpus:fineweb-edu-dedup`).
    `@COLUMN` names its text column when it is not `text_column`.
    """
    if not entries:
        raise DataError("dataset_mixture needs at least one SOURCE=WEIGHT entry")
    sources, problems = [], []
    for entry in entries:
        name, sep, raw = entry.rpartition("=")
        if not sep or not name.strip():
            raise DataError(f"dataset_mixture entry {entry!r} is not SOURCE=WEIGHT")
        name = name.strip()
        try:
            weight = float(raw)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            problems.append(f"dataset_mixture: the weight of {name!r} must be a positive number, got {raw.strip()!r}")
        source, at, column = name.rpartition("@")
        if not at or not column or "/" in column:  # an @ inside a path or Hub id is not a column
            source, column = name, text_column
        local = (glob.has_magic(source) or os.path.splitext(source)[1].lower() in LOCAL_BUILDERS
                 or os.path.exists(source) or source.startswith((".", "/", "~")))
        dataset_name, _, config = ("", "", "") if local else source.partition(":")
        sources.append(MixtureSource(name, weight, source if local else None, dataset_name or None, config or None,
                                     column))
    names = [source.name for source in sources]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"dataset_mixture names {name!r} twice")
    if problems:
        raise DataError("; ".join(problems))
    total = sum(source.weight for source in sources)
    if total == 0:
        raise DataError("dataset_mixture: all weights are zero (at least one must be positive)")
    zero = [source.name for source in sources if source.weight == 0]
    if zero:
        raise DataError(f"dataset_mixture: the weight of {zero[0]!r} must be a positive number, got 0")
    for source in sources:
        source.weight /= total
    return sources


def tag_source(batch: dict, index: int, text_column: str) -> dict:
    """A batch's documents tagged with their source's index (a module-level function: workers pickle it)."""
    return {SOURCE_COLUMN: [index] * len(batch[text_column])}
