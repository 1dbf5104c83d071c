"""Reading one source's documents, pass after pass: its shards dealt between the DataLoader workers, each pass in a
new seeded order, several shards at once, through a buffer of documents drawn at random: a shuffled stream that
samples the whole corpus from its first steps, resumable exactly.

A corpus read in file order trains on one shard at a time (the recipe's 82M tokens are under a third of
cosmopedia-v2's first shard), and whatever order its documents were written in becomes training drift.
`datasets` can permute shards and shuffle through a buffer (`IterableDataset.shuffle`), but its buffer is not part
of its state: a resumed run would refill it and train on other documents. Here each shard is its own `datasets`
stream (its position stays datasets' O(1) state); which shards are open, the order of the rest and the buffer's
documents (uint16 token ids where the vocabulary fits) are this reader's state.

    Shuffle(buffer=0, ...)   no shuffling at all: the shards in file order, one at a time (every pass the same)
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from datasets import IterableDataset

from pretraining.data.files import unreadable
from pretraining.errors import DataError


@dataclass
class Lane:
    """An open shard: its stream, the iterator over it (None until first read), and the state it was opened at."""

    shard: int
    stream: IterableDataset
    iterator: Iterator | None = None
    opened_at: dict | None = None


@dataclass(frozen=True)
class Shuffle:
    """How a source is shuffled (`--shuffle_buffer`, `--shuffle_shards`, `--seed`)."""

    buffer: int  # documents held and drawn from at random; 0: no shuffling (file order)
    shards: int  # shards read at once, a document from each in turn
    seed: int

    @property
    def on(self) -> bool:
        return self.buffer > 0


NO_SHUFFLE = Shuffle(buffer=0, shards=1, seed=0)


def token_dtype(vocab_size: int):
    """The smallest unsigned type that holds every token id (uint16 for SmolLM2's 49,152)."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class SourceReader:
    """One source's documents (token id arrays) for one DataLoader worker of one rank.

    `tokenized` is the rank's part of the source, tokenized. `bind` deals its shards to a worker; `start_pass` begins
    a pass (shards in a new order when shuffling); `next_document` gives the next document of the pass, or None when
    the pass is over. `state_dict` is the position after the last document given.
    """

    def __init__(self, tokenized: IterableDataset, index: int, shuffle: Shuffle, dtype=np.uint16, read_error=None):
        self.tokenized = tokenized
        self.index = index  # the source's index in its mixture (seeds its own order)
        self.shuffle = shuffle
        self.dtype = dtype
        # exception -> the error to raise when a document cannot be read or tokenized (`bad_record` names the line)
        self.read_error = read_error or partial(unreadable, "the training data")
        self.shards = list(range(tokenized.num_shards))  # this worker's shards (all of them until `bind`)
        self.worker = 0
        self.reset()

    def reset(self) -> None:
        """Back to before the first pass."""
        self.passes = 0  # passes started by this reader
        self.order: list[int] = []  # the shards of the pass not yet opened, in reading order
        self.lanes: list[Lane] = []  # the open shards
        self.turn = 0  # the lane that gives the next document
        self.buffer: list[np.ndarray] = []
        self.rng = None

    def bind(self, worker: int, workers: int) -> None:
        """Deal the shards between `workers` DataLoader workers (every `workers`-th to `worker`), as datasets does."""
        self.worker = worker
        self.shards = list(range(worker, self.tokenized.num_shards, workers))

    def start_pass(self) -> None:
        self.passes += 1
        self.rng = np.random.default_rng([self.shuffle.seed, self.index, self.worker, self.passes])
        self.order = list(self.rng.permutation(self.shards)) if self.shuffle.on else list(self.shards)
        self.lanes, self.turn, self.buffer = [], 0, []
        for _ in range(self.shuffle.shards if self.shuffle.on else 1):
            self._open_next_shard()

    def _open_next_shard(self, state: dict | None = None) -> bool:
        if not self.order:
            return False
        shard = int(self.order.pop(0))
        stream = self.tokenized.shard(num_shards=self.tokenized.num_shards, index=shard, contiguous=True)
        if state is not None:
            stream.load_state_dict(state)
        self.lanes.append(Lane(shard, stream, opened_at=state))
        return True

    def _read_lane(self) -> np.ndarray | None:
        """The next document of the open shards, taken from each in turn; None once every shard of the pass is read."""
        while self.lanes:
            self.turn %= len(self.lanes)
            lane = self.lanes[self.turn]
            if lane.iterator is None:
                # iter(batch_size=1), not iter(stream): in a DataLoader worker datasets would deal a one-shard stream's
                # shard to worker 0 only
                lane.iterator = lane.stream.iter(batch_size=1)
            try:
                batch = next(lane.iterator, None)
            except (ValueError, TypeError) as err:  # the readers' parse errors; a text that is no string
                if isinstance(err, DataError):
                    raise
                raise self.read_error(err) from err
            if batch is None:  # the shard is read: the next one of the pass takes its place
                del self.lanes[self.turn]
                if self._open_next_shard():
                    self.lanes.insert(self.turn, self.lanes.pop())
                continue
            self.turn += 1
            return np.asarray(batch["input_ids"][0], dtype=self.dtype)
        return None

    def next_document(self) -> np.ndarray | None:
        if not self.shuffle.on:
            return self._read_lane()
        while len(self.buffer) < self.shuffle.buffer:
            document = self._read_lane()
            if document is None:
                break
            self.buffer.append(document)
        if not self.buffer:
            return None
        # draw one at random; the last takes its place (a list pop from the middle would copy the list)
        i = int(self.rng.integers(len(self.buffer)))
        document, self.buffer[i] = self.buffer[i], self.buffer[-1]
        self.buffer.pop()
        return document

    def state_dict(self) -> dict:
        lengths = [len(document) for document in self.buffer]
        return {
            "passes": self.passes,
            "order": list(map(int, self.order)),
            # a lane not read since it was opened is where it was opened (datasets' state starts with the iteration)
            "lanes": [{"shard": lane.shard,
                       "stream": lane.stream.state_dict() if lane.iterator is not None else lane.opened_at}
                      for lane in self.lanes],
            "turn": self.turn,
            # the buffer's documents as one array and their lengths: torch.load(weights_only=True) reads tensors
            "buffer": torch.from_numpy(np.concatenate(self.buffer) if self.buffer else np.empty(0, self.dtype)),
            "buffer_lengths": torch.tensor(lengths, dtype=torch.int64),
            "rng": self.rng.bit_generator.state if self.rng is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.passes, self.turn = state["passes"], state["turn"]
        self.order = list(state["order"])
        self.lanes = []
        for lane in state["lanes"]:
            self.order.insert(0, lane["shard"])
            self._open_next_shard(lane["stream"])
        tokens = np.asarray(state["buffer"], dtype=self.dtype)
        self.buffer = list(np.split(tokens, np.cumsum(np.asarray(state["buffer_lengths"]))[:-1])) if len(
            state["buffer_lengths"]) else []
        self.rng = np.random.default_rng()
        if state["rng"] is not None:
            self.rng.bit_generator.state = state["rng"]
