"""Packing: tokenized documents concatenated and cut into `block_size` samples, pass after pass, resumable in O(1).

`PackedDataset.state_dict()` is the source stream's pass and position plus the tokens left over from the last
document, so a restart continues mid-document, in any pass, without re-reading what was already trained on
(torchdata's `StatefulDataLoader` collects it from every DataLoader worker).
"""

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
from datasets import IterableDataset

from pretraining.data.mixture import SOURCE_COLUMN
from pretraining.errors import DataError

NO_TOKENS = np.empty(0, dtype=np.int64)
IGNORE_INDEX = -100  # a label that takes no part in the loss


@dataclass
class PackerPosition:
    """Where the packer stands after the last sample it yielded.

    The leftover, `tokens[offset:]`, is cut out only when a state is asked for, so that a long document costs no
    copy per block."""

    source_state: dict  # the tokenized stream's state after the documents read so far
    tokens: np.ndarray = field(default_factory=lambda: NO_TOKENS)  # the tokens joined when the last block filled
    token_sources: np.ndarray = field(default_factory=lambda: NO_TOKENS)  # a mixture: each token's source index
    offset: int = 0  # tokens before it were yielded


@dataclass
class PassStart:
    """Where an iteration starts: a pass, and in it either its first document or a resumed position."""

    index: int = 0  # the pass (0 for the first)
    leftover: np.ndarray = field(default_factory=lambda: NO_TOKENS)  # tokens read before `source_state`
    leftover_sources: np.ndarray = field(default_factory=lambda: NO_TOKENS)
    source_state: dict | None = None  # a loaded mid-pass position; None: the pass starts at its first document
    source_token_counts: list[int] = field(default_factory=list)


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

    `num_sources` (a mixture's number of sources; its documents carry SOURCE_COLUMN): the state also holds the
    source of each leftover token and `source_token_counts`, the tokens of every sample yielded so far counted by
    the source they came from (a block can span sources). Saved with the data position, it is exact across resumes.
    `document_masking`: samples also get `position_ids` restarting after each `eos_token_id`, and the first token of
    each document is not a prediction target (its context would be the previous document, which it cannot see).
    """

    def __init__(self, tokenized: IterableDataset, block_size: int, passes: int | None = None, read_error=None,
                 num_sources: int = 0, document_masking: bool = False, eos_token_id: int | None = None):
        if document_masking and eos_token_id is None:
            raise ValueError("document_masking needs the eos_token_id that separates the documents")
        self.tokenized = tokenized
        self.block_size = block_size
        self.passes = passes
        # exception -> the error to raise when a document cannot be read (e.g. `bad_record`, which names the line)
        self.read_error = read_error
        self.num_sources = num_sources
        self.document_masking = document_masking
        self.eos_token_id = eos_token_id
        self.resume_point = PassStart(source_token_counts=[0] * num_sources)
        self.source_token_counts = [0] * num_sources
        self.position = PackerPosition(tokenized.state_dict())

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None and isinstance(self.tokenized._epoch, torch.Tensor):
            # datasets (5.2) keeps the epoch in one shared-memory tensor for every DataLoader worker (so that the
            # main process's set_epoch reaches them): workers in different passes would set each other's epoch, and
            # resume or sample the wrong pass. Each worker keeps its own (a copy of the whole stream costs ~1 s).
            self.tokenized._epoch = self.tokenized._epoch.clone()
        start = self.resume_point
        self.source_token_counts = list(start.source_token_counts)
        index, leftover, leftover_sources, resumed_at = (start.index, start.leftover, start.leftover_sources,
                                                         start.source_state)
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
        origins = [leftover_sources] if self.num_sources else None  # a mixture: each piece's tokens' source
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
                        block_sources = np.bincount(token_sources[start : start + block_size],
                                                    minlength=self.num_sources)
                        self.source_token_counts = [a + int(b) for a, b in zip(self.source_token_counts,
                                                                               block_sources)]
                    if self.document_masking:
                        positions = torch.from_numpy(document_positions(tokens[start : start + block_size],
                                                                        self.eos_token_id))
                        sample["position_ids"] = positions
                        sample["labels"] = input_ids.masked_fill(positions == 0, IGNORE_INDEX)
                    start += block_size
                    counts["blocks"] += 1
                    # the position after this sample, for a resume that starts with the next one (a resumed
                    # leftover can hold whole blocks: they come before the source's next document)
                    position = source_state if counts["documents"] == 0 else self.tokenized.state_dict()
                    self.position = PackerPosition(position, tokens, token_sources, start)
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
        position = self.position
        state = {"source": position.source_state,
                 "leftover": torch.from_numpy(position.tokens[position.offset:].copy())}
        if self.num_sources:
            state["leftover_sources"] = torch.from_numpy(position.token_sources[position.offset:].copy())
            state["tokens_by_source"] = list(self.source_token_counts)  # the key checkpoints have always used
        return state

    def load_state_dict(self, state: dict) -> None:
        self.tokenized.load_state_dict(state["source"])
        leftover = np.asarray(state["leftover"], dtype=np.int64)
        leftover_sources = np.asarray(state.get("leftover_sources", NO_TOKENS), dtype=np.int64)
        self.source_token_counts = [int(count) for count in state.get("tokens_by_source", [0] * self.num_sources)]
        self.resume_point = PassStart(state["source"]["epoch"], leftover, leftover_sources, state["source"],
                                      self.source_token_counts)
        self.position = PackerPosition(state["source"], leftover, leftover_sources, 0)


def loader_source_token_counts(loader_state, num_sources: int) -> list[int]:
    """The tokens per source of every sample a DataLoader delivered since step 0: the sum of its packers' counts in
    its state (one packer, or one per DataLoader worker, wherever torchdata's state nests them)."""
    totals = [0] * num_sources
    if isinstance(loader_state, dict):
        if "tokens_by_source" in loader_state and "leftover" in loader_state:  # a PackedDataset's state
            return [int(count) for count in loader_state["tokens_by_source"]]
        children = loader_state.values()
    elif isinstance(loader_state, (list, tuple)):
        children = loader_state
    else:
        return totals
    for child in children:
        totals = [a + b for a, b in zip(totals, loader_source_token_counts(child, num_sources))]
    return totals
