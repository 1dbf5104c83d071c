"""Streaming data for pretraining: text stream -> tokens (EOS between documents) -> packed blocks.

The same path serves the Hub corpus (`HuggingFaceTB/smollm-corpus`, `cosmopedia-v2`) and local files
(jsonl/json/parquet/csv/txt): everything is a `datasets` IterableDataset, tokenized lazily with a batched
`map`, then packed by `PackedDataset` into `block_size` samples with no padding.

`PackedDataset` is resumable in O(1): its `state_dict()` is the source stream's pass and position plus the
tokens left over from the last document, so a restart continues mid-document, in any pass, without
re-reading what was already trained on (torchdata's `StatefulDataLoader` collects it from every DataLoader
worker).

A mixture (`--dataset_mixture SOURCE=WEIGHT ...`, see `parse_mixture`) is `datasets.interleave_datasets` over the
streamed sources, each document tagged with its source's index, before tokenizing and packing: the same packer
and resume, each source split between ranks on its own (`rank_split`). The packer counts the tokens each
source contributed (`tokens_by_source`) in its state.
"""

import copy
import glob
import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice

import numpy as np
import torch
from datasets import Dataset, IterableDataset, interleave_datasets, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import default_data_collator

from hub import hub_problem

# local file suffix -> `datasets` builder
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


class DataError(ValueError):
    """Bad or unreachable training data; the message names the file, line or value."""


def builder_for(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in LOCAL_BUILDERS:
        raise DataError(f"unsupported data file type {suffix or '(none)'!r} for {path} (use one of {', '.join(LOCAL_BUILDERS)})")
    return LOCAL_BUILDERS[suffix]


# JSON Lines records checked before training; a bad record further on is named when training reaches it
CHECKED_RECORDS = 1000


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


def bad_record(files: list[str], text_column: str, error: Exception) -> DataError:
    """The error for a record that `datasets` could not read mid-training: the file and line when a full check of
    the JSON files finds it (paid only when reading failed), else the reader's own message."""
    for path in files:
        if builder_for(path) == "json":
            try:
                check_json_file(path, text_column, limit=None)
            except DataError as found:
                return found
    return DataError(f"cannot read the training data ({', '.join(files)}): {str(error).splitlines()[0]}")


def expand_files(pattern: str | None) -> list[str]:
    """A path or a glob ('shards/*.parquet'): several files make several shards, split between ranks and
    DataLoader workers file by file."""
    if not pattern:
        return []
    return sorted(glob.glob(pattern)) or [pattern] if glob.has_magic(pattern) else [pattern]


def load_text_stream(data_args, files: list[str] | None = None, split: str = "train") -> IterableDataset:
    """A streamed dataset of documents holding `data_args.text_column`, from local `files` or the Hub."""
    if files:
        for path in files:
            check_local_file(path, data_args.text_column)
        builders = {builder_for(path) for path in files}
        if len(builders) > 1:
            raise DataError(f"data files mix formats ({', '.join(sorted(builders))}): {', '.join(files)}")
        # everything goes through the streaming path; `streaming=False` only decides if the files are
        # first converted to Arrow (faster re-reads, costs disk and start-up time)
        try:
            dataset = load_dataset(builders.pop(), data_files={split: files}, split=split,
                                   streaming=data_args.streaming)
        except ValueError as err:  # the reader parses a first chunk of the files (up to 10 MB) to infer features
            raise bad_record(files, data_args.text_column, err) from err
    else:
        try:
            dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, split=split, streaming=data_args.streaming)
        except (OSError, ValueError) as err:  # ValueError: a config name the dataset does not have
            reason, not_there = hub_problem(err) or (str(err).splitlines()[0], False)
            hint = "; use local files with --train_file [--validation_file] instead" if not_there else ""
            raise DataError(f"cannot load dataset {data_args.dataset_name!r} ({data_args.dataset_config_name}): "
                            f"{reason}{hint}") from err
        if data_args.text_column not in (dataset.column_names or [data_args.text_column]):
            check_columns(f"dataset {data_args.dataset_name}", dataset.column_names, data_args.text_column)
    if isinstance(dataset, Dataset):
        dataset = dataset.to_iterable_dataset()
    return dataset


class IdsEncoder:
    """Texts to their token ids (no special tokens), as `tokenizer(texts)` gives them.

    For a fast tokenizer it calls the Rust tokenizer's `encode_batch_fast` itself: `tokenizer(texts)` also computes
    character offsets and converts every encoding to Python lists one attribute at a time, a quarter or more of
    the tokenizing time (benchmarks/bench_data.py), for output the pipeline drops. The copy is set up the way
    `tokenizer(texts)` sets the shared one before each call: no truncation or padding, and special-token strings in
    the text split or not as `tokenizer.split_special_tokens` says.
    A class rather than a closure so that DataLoader workers started by spawn or forkserver (the default on macOS
    and, from Python 3.14, on Linux) can unpickle it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = None
        if getattr(tokenizer, "is_fast", False):
            self.backend = copy.deepcopy(tokenizer.backend_tokenizer)
            self.backend.no_truncation()
            self.backend.no_padding()
            self.backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def __getstate__(self):
        # the Rust tokenizer's pickle drops encode_special_tokens: the receiving process sets its copy up again
        return {"tokenizer": self.tokenizer}

    def __setstate__(self, state):
        self.__init__(state["tokenizer"])


def tokenize_batch(batch: dict, encode: IdsEncoder, eos: int, text_column: str) -> dict:
    return {"input_ids": [doc + [eos] for doc in encode(batch[text_column])]}


# the column that tags a mixture's documents with the index of their source (kept through tokenizing)
SOURCE_COLUMN = "source_index"


def tokenize_stream(dataset: IterableDataset, tokenizer, text_column: str, tagged: bool = False) -> IterableDataset:
    """Tokenize lazily (fast tokenizer, batched) and append EOS to every document, so that packed
    neighbours are separated as in the official pretraining data. `tagged`: keep a mixture's SOURCE_COLUMN."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token: documents could not be separated")
    dataset = dataset.select_columns([text_column, SOURCE_COLUMN] if tagged else [text_column])
    # a module-level function with fn_kwargs, not a closure: spawned DataLoader workers pickle the dataset
    fn_kwargs = {"encode": IdsEncoder(tokenizer), "eos": eos, "text_column": text_column}
    return dataset.map(tokenize_batch, batched=True, batch_size=256, remove_columns=[text_column], fn_kwargs=fn_kwargs)


NO_TOKENS = np.empty(0, dtype=np.int64)


def document_positions(tokens: np.ndarray, eos: int) -> np.ndarray:
    """Position ids that restart at 0 after every EOS (and at the block's start): the model then attends within
    each document only (transformers' masking utilities read packed sequences from position ids)."""
    index = np.arange(len(tokens))
    starts = np.zeros(len(tokens), dtype=np.int64)
    starts[1:] = np.where(tokens[:-1] == eos, index[1:], 0)
    return index - np.maximum.accumulate(starts)


class PackedDataset(torch.utils.data.IterableDataset):
    """Concatenates tokenized documents and cuts them into `block_size` samples, pass after pass over the source.

    Pads nothing and drops only each pass's last partial block: a new pass starts with no leftover tokens, at its
    first document, so that a resumed run cuts the same blocks as an uninterrupted one. With `passes=None` (the
    training set) the stream never ends. The Trainer reads it for `max_steps`, and ranks or DataLoader workers whose
    parts hold different numbers of tokens each start their next pass on their own, so none runs dry while the
    others wait for it in a collective. A pass is the source's epoch (`set_epoch`, which also reshuffles a
    shuffled source); the Trainer's own epochs are not passed on, since this stream has none.

    Samples are `input_ids`, `labels` (the same tensor: the model shifts them) and `data_pass`, 1 for the first
    pass. `state_dict()` is the state after the last sample yielded: the source's state (its epoch and position)
    and the leftover tokens of the document in progress, as a tensor (`torch.load(..., weights_only=True)` reads it).

    `sources` (a mixture's number of sources; its documents carry SOURCE_COLUMN): the state also holds the source
    of each leftover token and `tokens_by_source`, the tokens of every sample yielded so far counted by the source
    they came from (a block can span sources). Saved with the data position, it is exact across resumes.
    `document_eos`: samples also get `position_ids` restarting after each EOS, and the first token of each document
    is not a prediction target (its context would be the previous document, which it cannot see).
    """

    def __init__(self, tokenized: IterableDataset, block_size: int, passes: int | None = None, read_error=None,
                 sources: int = 0, document_eos: int | None = None):
        self.tokenized = tokenized
        self.block_size = block_size
        self.passes = passes
        # exception -> the error to raise when a document cannot be read (e.g. `bad_record`, which names the line)
        self.read_error = read_error
        self.sources = sources
        self.document_eos = document_eos
        # where every iteration starts: (pass index, leftover tokens, their sources, the loaded source state when
        # that is mid-pass, tokens_by_source)
        self._start = (0, NO_TOKENS, NO_TOKENS, None, [0] * sources)
        self.tokens_by_source = [0] * sources
        # (source state, tokens, their sources, offset) after the last sample yielded; the leftover is cut from it
        # only when asked for, so that a long document costs no copy per block
        self._position = (tokenized.state_dict(), NO_TOKENS, NO_TOKENS, 0)

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None and isinstance(self.tokenized._epoch, torch.Tensor):
            # datasets (5.2) keeps the epoch in one shared-memory tensor for every DataLoader worker (so that the
            # main process's set_epoch reaches them): workers in different passes would set each other's epoch, and
            # resume or sample the wrong pass. Each worker keeps its own (a copy of the whole stream costs ~1 s).
            self.tokenized._epoch = self.tokenized._epoch.clone()
        index, leftover, leftover_sources, resumed_at, tokens_by_source = self._start
        self.tokens_by_source = list(tokens_by_source)
        while self.passes is None or index < self.passes:
            self.tokenized.set_epoch(index)  # datasets resumes a loaded position in its own epoch only
            counts = {"documents": 0, "blocks": 0}
            yield from self._pack_pass(leftover, leftover_sources, resumed_at, index + 1, counts)
            if resumed_at is None and counts["blocks"] == 0 and self.passes is None:  # else it would never end
                if counts["documents"] == 0:
                    return  # nothing to read: a DataLoader worker that datasets gives no shard to
                raise DataError(f"a whole pass over the training data ({counts['documents']} documents) holds fewer "
                                f"than block_size={self.block_size} tokens: use more data or a smaller --block_size")
            index, leftover, leftover_sources, resumed_at = index + 1, NO_TOKENS, NO_TOKENS, None

    def _pack_pass(self, leftover: np.ndarray, leftover_sources: np.ndarray, source_state: dict | None,
                   data_pass: int, counts: dict):
        """The samples of the rest of the current pass: `leftover` (tokens read before `source_state`, when
        resuming), then the documents still to come. Counts documents and blocks."""
        block_size = self.block_size
        documents = iter(self.tokenized)
        # Documents are collected as lists and joined once a block is full: appending each document to one
        # growing list would copy the whole buffer per document, and torch.tensor(list) converts int by int.
        pieces, length = [leftover], len(leftover)
        origins = [leftover_sources] if self.sources else None  # a mixture: each piece's tokens' source
        token_sources = NO_TOKENS
        while True:
            if length >= block_size:
                tokens = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=length)
                blocks = torch.from_numpy(tokens)
                if origins is not None:
                    token_sources = np.concatenate(origins)
                start = 0
                while length - start >= block_size:
                    input_ids = blocks[start : start + block_size]
                    sample = {"input_ids": input_ids, "labels": input_ids, "data_pass": data_pass}
                    if origins is not None:
                        block_sources = np.bincount(token_sources[start : start + block_size], minlength=self.sources)
                        self.tokens_by_source = [a + int(b) for a, b in zip(self.tokens_by_source, block_sources)]
                    if self.document_eos is not None:
                        positions = torch.from_numpy(document_positions(tokens[start : start + block_size],
                                                                        self.document_eos))
                        sample["position_ids"] = positions
                        sample["labels"] = input_ids.masked_fill(positions == 0, -100)
                    start += block_size
                    counts["blocks"] += 1
                    # the position after this sample, for a resume that starts with the next one (a resumed
                    # leftover can hold whole blocks: they come before the source's next document)
                    position = source_state if counts["documents"] == 0 else self.tokenized.state_dict()
                    self._position = (position, tokens, token_sources, start)
                    yield sample
                pieces, length = [tokens[start:]], length - start
                if origins is not None:
                    origins = [token_sources[start:]]
            try:
                example = next(documents, None)
            except ValueError as err:  # pyarrow's and the JSON reader's parse errors
                if self.read_error is None or isinstance(err, DataError):
                    raise
                raise self.read_error(err) from err
            if example is None:
                return
            counts["documents"] += 1
            pieces.append(example["input_ids"])
            length += len(example["input_ids"])
            if origins is not None:
                origins.append(np.full(len(example["input_ids"]), example[SOURCE_COLUMN], dtype=np.int64))

    def state_dict(self) -> dict:
        source, tokens, token_sources, start = self._position
        state = {"source": source, "leftover": torch.from_numpy(tokens[start:].copy())}
        if self.sources:
            state["leftover_sources"] = torch.from_numpy(token_sources[start:].copy())
            state["tokens_by_source"] = list(self.tokens_by_source)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.tokenized.load_state_dict(state["source"])
        leftover = np.asarray(state["leftover"], dtype=np.int64)
        leftover_sources = np.asarray(state.get("leftover_sources", NO_TOKENS), dtype=np.int64)
        self.tokens_by_source = [int(count) for count in state.get("tokens_by_source", [0] * self.sources)]
        self._start = (state["source"]["epoch"], leftover, leftover_sources, state["source"], self.tokens_by_source)
        self._position = (state["source"], leftover, leftover_sources, 0)


def tokens_by_source(loader_state, sources: int) -> list[int]:
    """The tokens per source of every sample a DataLoader delivered since step 0: the sum of its packers' counts in
    its state (one packer, or one per DataLoader worker, wherever torchdata's state nests them)."""
    totals = [0] * sources
    if isinstance(loader_state, dict):
        if "tokens_by_source" in loader_state and "leftover" in loader_state:  # a PackedDataset's state
            return [int(count) for count in loader_state["tokens_by_source"]]
        children = loader_state.values()
    elif isinstance(loader_state, (list, tuple)):
        children = loader_state
    else:
        return totals
    for child in children:
        totals = [a + b for a, b in zip(totals, tokens_by_source(child, sources))]
    return totals


def collate_blocks(samples: list[dict], flatten: bool = False) -> dict:
    """Stacks samples into a batch; `data_pass` stays a Python int (the batch's latest pass), so that reading it
    on the host needs no device sync once the batch has moved to the GPU.

    `flatten` (document masking under flash attention): the blocks as one row, (1, batch * block_size), as
    transformers' DataCollatorWithFlattening lays them out: flash attention takes the documents from position_ids
    (its variable-length path) only in a batch of one row. Each block starts at position 0 with an ignored label,
    so the row has the same loss as the stacked blocks."""
    passes = [sample.pop("data_pass") for sample in samples if "data_pass" in sample]
    batch = default_data_collator(samples)
    if flatten:
        batch = {key: value.reshape(1, -1) for key, value in batch.items()}  # (batch, block) -> (1, batch * block)
    if passes:
        batch["data_pass"] = max(passes)
    return batch


def document_key(text: str) -> bytes:
    """A stable digest of a document (Python's hash() differs between processes, e.g. spawned workers)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def hold_out(stream: IterableDataset, count: int, text_column: str) -> tuple[IterableDataset, IterableDataset]:
    """(the first `count` documents, the stream without them).

    The held-out documents are dropped from training by content rather than with `skip(count)`: `datasets`
    splits a skip between shards when the stream is split between ranks or DataLoader workers, and would
    then train on held-out documents and skip others. Repeats of a held-out document are dropped too.
    """
    documents = list(stream.take(count))
    held_out = {document_key(doc[text_column]) for doc in documents}
    evaluation = Dataset.from_list(documents).to_iterable_dataset() if documents else None
    fn_kwargs = {"held_out": held_out, "text_column": text_column}  # picklable, as in tokenize_stream
    return evaluation, stream.filter(not_held_out, batched=True, batch_size=256, fn_kwargs=fn_kwargs)


def not_held_out(batch: dict, held_out: set[bytes], text_column: str) -> list[bool]:
    return [document_key(text) not in held_out for text in batch[text_column]]


@dataclass
class MixtureSource:
    """One `SOURCE[@COLUMN]=WEIGHT` entry of `--dataset_mixture`."""

    name: str  # as the user wrote it, without the weight: the key in tokens_by_source and eval_loss/<name>
    weight: float  # normalized: the weights of a mixture sum to 1
    files: list[str]  # a local file or glob's files; [] for a Hub dataset
    dataset_name: str | None  # a Hub dataset, with its config
    dataset_config_name: str | None
    text_column: str


def parse_mixture(entries: list[str], text_column: str) -> list[MixtureSource]:
    """`SOURCE[@COLUMN]=WEIGHT` entries -> sources with normalized weights.

    SOURCE is a local file or glob (`data/code/*.parquet`; anything with a data file suffix, a glob character or a
    path that exists) or a Hub dataset with an optional config (`HuggingFaceTB/smollm-corpus:fineweb-edu-dedup`).
    `@COLUMN` names its text column when it is not `text_column`. Nothing is read here: see `load_source`.
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
        sources.append(MixtureSource(name, weight, expand_files(source) if local else [], dataset_name or None,
                                     config or None, column))
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


def load_source(source: MixtureSource, data_args) -> IterableDataset:
    """The source's documents as a stream with one column, `data_args.text_column`; errors name the source."""
    args = copy.copy(data_args)
    args.text_column, args.dataset_name, args.dataset_config_name = (source.text_column, source.dataset_name,
                                                                     source.dataset_config_name)
    try:
        stream = load_text_stream(args, source.files)
    except DataError as err:
        raise DataError(f"dataset_mixture source {source.name!r}: {err}") from None
    stream = stream.select_columns([source.text_column])
    if source.text_column != data_args.text_column:
        stream = stream.rename_column(source.text_column, data_args.text_column)
    return stream


def tag_source(batch: dict, index: int, text_column: str) -> dict:
    return {SOURCE_COLUMN: [index] * len(batch[text_column])}


def rank_split(stream: IterableDataset, rank: int, world_size: int,
               digest_column: str | None = None) -> tuple[IterableDataset, str]:
    """This rank's part of the stream, and how it is read.

    Whole shards whenever there are at least as many shards as ranks (a rank may get one more than another: the
    end-of-pass handling absorbs the difference). Else every rank reads and parses all of it and keeps every
    world_size-th document, or, for a mixture's source (`digest_column`: its text column), the documents whose
    digest falls to it: ranks whose other sources have different shard counts split this one differently between
    their DataLoader workers, and a position would then name different documents on different ranks.

    Each source of a mixture is split on its own before `interleave_datasets`, which takes only sources that
    `split_dataset_by_node` split alike (one small source would make every rank read every source): hence
    `IterableDataset.shard` for whole shards, the split that `split_dataset_by_node` makes of them.
    """
    if world_size == 1:
        return stream, "whole"
    if stream.num_shards >= world_size:
        return stream.shard(num_shards=world_size, index=rank, contiguous=False), \
            f"{stream.num_shards} shards split between {world_size} ranks"
    reading = f"{stream.num_shards} shard(s) for {world_size} ranks: every rank reads all, keeps "
    if digest_column is None:
        return split_dataset_by_node(stream, rank, world_size, strategy="examples"), \
            reading + f"one document in {world_size}"
    fn_kwargs = {"rank": rank, "world_size": world_size, "text_column": digest_column}
    return stream.filter(falls_to_rank, batched=True, batch_size=256, fn_kwargs=fn_kwargs), \
        reading + "the documents whose digest falls to it"


def falls_to_rank(batch: dict, rank: int, world_size: int, text_column: str) -> list[bool]:
    return [int.from_bytes(document_key(text)[:8], "little") % world_size == rank for text in batch[text_column]]


def check_rank_part(stream: IterableDataset, rank: int, world_size: int, reading: str, what: str) -> None:
    """A rank's part must hold a document: a rank with no data would stop while the others wait for it in a
    collective, and interleave_datasets fails on an empty source. (Not `stream.take(1)`: a stream split by
    `split_dataset_by_node` takes before it splits, and that one document may be another rank's.)"""
    if world_size > 1 and next(iter(stream), None) is None:
        raise DataError(f"{what}: rank {rank} of {world_size} gets none of its documents ({reading}): use more "
                        "data or fewer ranks")


def eval_blocks(stream: IterableDataset | None, tokenizer, data_args, what: str) -> Dataset | None:
    """The first `max_eval_samples` packed blocks of `stream`, materialised once (they are few) so that every
    evaluation sees the same data without re-streaming it."""
    if stream is None:
        return None
    document_eos = tokenizer.eos_token_id if getattr(data_args, "document_masking", False) else None
    packed = PackedDataset(tokenize_stream(stream, tokenizer, data_args.text_column), data_args.block_size,
                           passes=1, document_eos=document_eos)
    samples = list(islice(packed, data_args.max_eval_samples))
    if not samples:
        raise DataError(f"{what} holds fewer than block_size={data_args.block_size} tokens: use more "
                        "--validation_documents, a larger --validation_file or a smaller --block_size")
    columns = {key: [sample[key] for sample in samples] for key in samples[0] if key != "data_pass"}
    return Dataset.from_dict(columns).with_format("torch")


def build_datasets(data_args, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 42):
    """Return (train PackedDataset, eval data or None).

    Validation is `--validation_file`, else the first `validation_documents` documents of the stream,
    which training never sees: of each source's stream in a mixture, and the eval data is then a dict of
    source name -> its blocks. The eval blocks are materialised once (they are few) so that every evaluation
    sees the same data without re-streaming it. With several processes each rank trains on its own part of
    the stream (`rank_split`; in a mixture, each source's stream on its own). A mixture samples its
    sources with `seed` (`interleave_datasets`).
    """
    mixture = getattr(data_args, "dataset_mixture", None)
    sources = parse_mixture(mixture, data_args.text_column) if mixture else None
    document_eos = tokenizer.eos_token_id if getattr(data_args, "document_masking", False) else None
    eval_data = None
    if data_args.validation_file:
        eval_stream = load_text_stream(data_args, expand_files(data_args.validation_file), split="validation")
        eval_data = eval_blocks(eval_stream, tokenizer, data_args, "validation data")
    if sources:
        streams, held_out, readings = [], {}, []
        for index, source in enumerate(sources):
            stream = load_source(source, data_args)
            if not data_args.validation_file and data_args.validation_documents > 0:
                eval_stream, stream = hold_out(stream, data_args.validation_documents, data_args.text_column)
                held_out[source.name] = eval_blocks(eval_stream, tokenizer, data_args,
                                                    f"the held-out documents of {source.name!r}")
                if next(iter(stream.take(1)), None) is None:
                    raise DataError(f"dataset_mixture source {source.name!r}: no documents left to train on after "
                                    f"holding out the first {data_args.validation_documents} for evaluation (lower "
                                    "--validation_documents)")
            stream, reading = rank_split(stream, rank, world_size, digest_column=data_args.text_column)
            check_rank_part(stream, rank, world_size, reading, f"dataset_mixture source {source.name!r}")
            readings.append(f"{source.name}: {reading}")
            fn_kwargs = {"index": index, "text_column": data_args.text_column}
            streams.append(stream.map(tag_source, batched=True, batch_size=256, fn_kwargs=fn_kwargs))
        eval_data = held_out or eval_data
        # a source that runs out starts again while the others go on, so the weights hold; a pass over the
        # mixture ends once every source has run out at least once (then the next pass starts them all afresh)
        stream = interleave_datasets(streams, probabilities=[source.weight for source in sources], seed=seed,
                                     stopping_strategy="all_exhausted")
        read_error, reading = None, "; ".join(readings)
    else:
        train_files = expand_files(data_args.train_file)
        stream = load_text_stream(data_args, train_files)
        if not data_args.validation_file and data_args.validation_documents > 0:
            eval_stream, stream = hold_out(stream, data_args.validation_documents, data_args.text_column)
            eval_data = eval_blocks(eval_stream, tokenizer, data_args, "validation data")
        read_error = partial(bad_record, train_files, data_args.text_column) if train_files else None
        stream, reading = rank_split(stream, rank, world_size)
        check_rank_part(stream, rank, world_size, reading, "the training data")
    train = PackedDataset(tokenize_stream(stream, tokenizer, data_args.text_column, tagged=bool(sources)),
                          data_args.block_size, read_error=read_error, sources=len(sources or ()),
                          document_eos=document_eos)
    train.mixture, train.reading = sources, reading  # for the start-up summary and the log's tokens_by_source
    return train, eval_data
