"""`--dataset_mixture SOURCE[@COLUMN]=WEIGHT ...` and `--data_stages`: a mixture's sources and weights, and the
stages whose mixtures change at given steps, parsed once (`DataArguments`).

Nothing is read here: `sources.load_source` opens a source's stream, `mixing.TokenShareMixer` mixes them.
"""

import glob
import json
import math
import os
from dataclasses import dataclass

from pretraining.data.files import LOCAL_BUILDERS, expand_files
from pretraining.errors import DataError


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


@dataclass
class DataStage:
    """One `--data_stages` entry: from `start_step` steps on (until the next stage), this mixture."""

    start_step: int
    mixture: list[MixtureSource]


def mixture_entries(value, where: str) -> list[str]:
    """A mixture as `SOURCE=WEIGHT` strings, from a list of them or a mapping SOURCE: WEIGHT (config files)."""
    if isinstance(value, dict):
        return [f"{name}={weight}" for name, weight in value.items()]
    if isinstance(value, list) and all(isinstance(entry, str) for entry in value):
        return value
    raise DataError(f"{where}: dataset_mixture must be a list of SOURCE=WEIGHT or a mapping SOURCE: WEIGHT, got {value!r}")


def parse_stages(text: str, text_column: str) -> list[DataStage]:
    """`--data_stages`: a JSON (or, in a config file, YAML) list of `{start_step, dataset_mixture}`, the first at step
    0 and the steps increasing, each mixture as `--dataset_mixture` takes it."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"data_stages is not valid JSON ({err.msg}): {text}") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"data_stages must be a non-empty list of {{start_step, dataset_mixture}}, got {text}")
    stages = []
    for number, entry in enumerate(entries, start=1):
        where = f"data_stages entry {number}"
        if not isinstance(entry, dict) or set(entry) != {"start_step", "dataset_mixture"}:
            raise DataError(f"{where} must hold exactly start_step and dataset_mixture, got {entry!r}")
        start = entry["start_step"]
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise DataError(f"{where}: start_step must be a whole number of steps >= 0, got {start!r}")
        try:
            mixture = parse_mixture(mixture_entries(entry["dataset_mixture"], where), text_column)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        stages.append(DataStage(start, mixture))
    if stages[0].start_step != 0:
        raise DataError(f"data_stages: the first stage must start at step 0, got {stages[0].start_step}")
    for before, after in zip(stages, stages[1:]):
        if after.start_step <= before.start_step:
            raise DataError(f"data_stages: start steps must increase, got {before.start_step} then {after.start_step}")
    return stages


def stage_sources(stages: list[DataStage]) -> tuple[list[MixtureSource], list[list[float]]]:
    """Every source of the stages once (in order of first mention), and each stage's weight of each (0: not in it)."""
    first = {}
    for stage in stages:
        for source in stage.mixture:
            first.setdefault(source.name, source)
    stage_weights = [{source.name: source.weight for source in stage.mixture} for stage in stages]
    weights = [[weights.get(name, 0.0) for name in first] for weights in stage_weights]
    return list(first.values()), weights
