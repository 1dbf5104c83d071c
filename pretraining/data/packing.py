"""Packing: documents from the mixer concatenated and cut into `block_size` samples, pass after pass, resumable in
O(1).

`PackedDataset.state_dict()` is every source's reading position (its shards, their positions and its shuffle
buffer), the mixer's counts and the tokens left over from the last document, so a restart continues
mid-document, in any pass, without re-reading what was already trained on (torchdata's `StatefulDataLoader`
collects it from every DataLoader worker).
"""

from dataclasses import dataclass

import numpy as np
import torch

from pretraining.data.mixing import TokenShareMixer
from pretraining.errors import DataError

NO_TOKENS = np.empty(0, dtype=np.int64)
IGNORE_INDEX = -100  # a label that takes no part in the loss


@dataclass(frozen=True)
class StageSchedule:
    """Which data stage each of a rank's loader batches belongs to (`--data_stages`): stage i from loader batch
    `batch_starts[i]` on, up to the next stage's start; the last stage goes on to the end. The trainer's side turns the
    stages' start steps into loader batches (run_state.RunState.batch_of_step), so that this side knows nothing of
    steps or gradient accumulation."""

    batch_starts: tuple[int, ...]  # increasing

    def stage_of_batch(self, batch: int) -> int:
        return max(0, sum(start <= batch for start in self.batch_starts) - 1)


def document_positions(tokens: np.ndarray, eos: int) -> np.ndarray:
    """Position ids that restart at 0 after every EOS (and at the block's start): the model then attends within
    each document only (transformers' masking utilities read packed sequences from position ids)."""
    index = np.arange(len(tokens))
    starts = np.zeros(len(tokens), dtype=np.int64)
    starts[1:] = np.where(tokens[:-1] == eos, index[1:], 0)
    return index - np.maximum.accumulate(starts)


@dataclass
class PassCounts:
    """What a pass over the data held: documents read, blocks cut."""

    documents: int = 0
    blocks: int = 0


@dataclass
class PackerPosition:
    """Where the packer stands after the last sample it yielded: the leftover, `tokens[offset:]`, is cut out only
    when a state is asked for, so that a long document costs no copy per block. (The mixer's position needs no
    copy: between two samples the packer reads nothing.)"""

    tokens: np.ndarray  # the tokens joined when the last block filled
    token_sources: np.ndarray  # each token's source index
    offset: int  # tokens before it were yielded


class BlockStream:
    """One stream of blocks: the mixer's documents concatenated and cut into `block_size` samples, pass after pass.

    Pads nothing and drops only each pass's last partial block: a new pass starts with no leftover tokens, at its
    first document, so that a resumed run cuts the same blocks as an uninterrupted one. With `passes=None` (the
    training set) the stream never ends. The Trainer reads it for `max_steps`, and ranks or streams whose parts hold
    different numbers of tokens each start their next pass on their own, so none runs dry while the others wait for
    it in a collective.

    A rank's data is `count` such streams (`index` is this one's), each with its own shards of every source; the
    DataLoader takes batches of `blocks_per_batch` blocks from them in turn, so this stream's j-th batch is the rank's
    loader batch j * count + index, whatever the batch size was when each was taken: that tells a block's data stage.
    Samples are `input_ids` and `labels` (the same tensor: the model shifts them), tensors only. The state holds the
    pass (0 for the first) and counts, per source, the tokens of every sample yielded so far (`tokens_by_source`; a
    block can span sources), and with data stages per stage too: saved with the data position, exact across
    resumes. `document_masking`: samples also get `position_ids` restarting after each `eos_token_id`, and the first
    token of each document is not a prediction target (its context would be the previous document, which it cannot
    see).
    """

    def __init__(self, mixer: TokenShareMixer, block_size: int, passes: int | None = None,
                 stages: StageSchedule | None = None, document_masking: bool = False, eos_token_id: int | None = None,
                 index: int = 0, count: int = 1, blocks_per_batch: int = 1):
        if document_masking and eos_token_id is None:
            raise ValueError("document_masking needs the eos_token_id that separates the documents")
        self.mixer = mixer
        self.block_size = block_size
        self.passes = passes
        self.stages = stages
        self.document_masking = document_masking
        self.eos_token_id = eos_token_id
        self.index, self.count = index, count
        self.blocks_per_batch = blocks_per_batch
        self.loaded_state = None  # where the next iteration starts; None: at the beginning
        self._reset_counts()
        self.started = False  # a pass has begun (a state from before it means the beginning)
        self.pass_index = 0
        self.position = PackerPosition(NO_TOKENS, NO_TOKENS, 0)
        self.batches, self.blocks_in_batch = 0, 0  # whole batches yielded since the data began, and blocks of the next

    def _reset_counts(self) -> None:
        sources, stages = len(self.mixer.readers), len(self.stages.batch_starts) if self.stages else 1
        self.source_token_counts = [0] * sources
        self.stage_token_counts = [[0] * sources for _ in range(stages)]

    def stage_of_next_block(self) -> int:
        """The data stage of the next block this stream yields: that of the loader batch it goes into."""
        if self.stages is None:
            return 0
        return self.stages.stage_of_batch(self.batches * self.count + self.index)

    def _count_block(self) -> None:
        self.blocks_in_batch += 1
        if self.blocks_in_batch == self.blocks_per_batch:
            self.batches, self.blocks_in_batch = self.batches + 1, 0

    def __iter__(self):
        self.mixer.bind(self.index, self.count)
        state = self.loaded_state
        resuming = state is not None and state["started"]
        if resuming:
            self.mixer.load_state_dict(state["mixer"])
            self.pass_index, self.batches = state["pass"], state["batches"]
            self.blocks_in_batch = state["blocks_in_batch"]
            leftover = np.asarray(state["leftover"], dtype=np.int64)
            leftover_sources = np.asarray(state["leftover_sources"], dtype=np.int64)
            self.source_token_counts = [int(count) for count in state["tokens_by_source"]]
            self.stage_token_counts = [[int(count) for count in stage] for stage in state["tokens_by_stage"]]
        else:
            self.mixer.reset()
            self._reset_counts()
            self.pass_index, self.batches, self.blocks_in_batch = 0, 0, 0
            leftover, leftover_sources = NO_TOKENS, NO_TOKENS
        self.position = PackerPosition(leftover, leftover_sources, 0)
        self.started = True
        while self.passes is None or self.pass_index < self.passes:
            if not resuming:
                self.mixer.start_pass()
            read = PassCounts()
            yield from self._pack_pass(leftover, leftover_sources, read)
            if not resuming and read.blocks == 0 and self.passes is None:  # else it would never end
                if read.documents == 0:
                    return  # nothing to read in this stream's part
                raise DataError(f"a whole pass over the training data ({read.documents} documents) holds fewer "
                                f"than block_size={self.block_size} tokens: use more data or a smaller --block_size")
            self.pass_index += 1
            leftover, leftover_sources, resuming = NO_TOKENS, NO_TOKENS, False
            self.position = PackerPosition(NO_TOKENS, NO_TOKENS, 0)

    def _pack_pass(self, leftover: np.ndarray, leftover_sources: np.ndarray, read: "PassCounts"):
        """The samples of the rest of the current pass: `leftover` (tokens read before the mixer's position, when
        resuming), then the documents still to come. Counts documents and blocks."""
        block_size = self.block_size
        # Documents are collected as arrays and joined once a block is full: appending each document to one
        # growing array would copy the whole buffer per document.
        pieces, origins, length = [leftover], [leftover_sources], len(leftover)
        while True:
            if length >= block_size:
                tokens = np.concatenate(pieces, dtype=np.int64)
                token_sources = np.concatenate(origins)
                blocks = torch.from_numpy(tokens)
                start = 0
                while length - start >= block_size:
                    input_ids = blocks[start : start + block_size]
                    sample = {"input_ids": input_ids, "labels": input_ids}
                    by_source = np.bincount(token_sources[start : start + block_size],
                                            minlength=len(self.source_token_counts))
                    stage_counts = self.stage_token_counts[self.stage_of_next_block()]
                    for source, count in enumerate(by_source.tolist()):
                        self.source_token_counts[source] += count
                        stage_counts[source] += count
                    if self.document_masking:
                        positions = torch.from_numpy(document_positions(tokens[start : start + block_size],
                                                                        self.eos_token_id))
                        sample["position_ids"] = positions
                        sample["labels"] = input_ids.masked_fill(positions == 0, IGNORE_INDEX)
                    start += block_size
                    read.blocks += 1
                    self._count_block()
                    self.position = PackerPosition(tokens, token_sources, start)
                    yield sample
                pieces, origins, length = [tokens[start:]], [token_sources[start:]], length - start
            # the block being filled decides the stage of the documents drawn for it
            drawn = self.mixer.next_document(self.stage_of_next_block())
            if drawn is None:
                return
            document, source = drawn
            read.documents += 1
            pieces.append(document)
            origins.append(np.full(len(document), source, dtype=np.int64))
            length += len(document)

    def state_dict(self) -> dict:
        if not self.started and self.loaded_state is not None:
            return self.loaded_state  # loaded and not read from yet: still where it was loaded
        position = self.position
        return {
            "started": self.started,
            "pass": self.pass_index,
            # whole batches yielded since the data began, and blocks of the next: its loader batch, hence its stage
            "batches": self.batches,
            "blocks_in_batch": self.blocks_in_batch,
            "mixer": self.mixer.state_dict(),
            "leftover": torch.from_numpy(position.tokens[position.offset:].copy()),
            "leftover_sources": torch.from_numpy(position.token_sources[position.offset:].copy()),
            "tokens_by_source": list(self.source_token_counts),
            "tokens_by_stage": [list(stage) for stage in self.stage_token_counts],
        }

    def load_state_dict(self, state: dict) -> None:
        self.loaded_state = state  # the next iteration starts there; until then it is this stream's state


def hosting_workers(streams: int, workers: int) -> int:
    """The DataLoader workers that host `streams` streams: the most, up to `workers` (0: the main process alone), that
    share them out evenly (each hosts streams // hosting of them), so that taking batches from the workers in turn
    takes them from the streams in turn."""
    return max(count for count in range(1, max(1, workers) + 1) if streams % count == 0)


class PackedDataset(torch.utils.data.IterableDataset):
    """A rank's training (or evaluation) blocks: its `BlockStream`s, shared out between the DataLoader workers.

    The number of streams is the run's, fixed at its first start (one per DataLoader worker then), so that a resumed
    run may have any number of workers: each hosting worker takes every hosting-th stream and gives batches of
    `blocks_per_batch` blocks from them in turn, and the batches reach the Trainer in the streams' order whatever the
    worker count (`hosting_workers`; a worker beyond those takes no part). The state is the hosted streams' states
    and whose turn it is; `resume_streams` restores every stream from a checkpoint taken with another worker count.
    """

    def __init__(self, streams: list[BlockStream]):
        self.streams = streams
        self.blocks_per_batch = streams[0].blocks_per_batch
        self.loaded_state = None
        self.offset = 0  # the stream whose batch comes first (a resumed rank's next)
        self.hosted, self.turn = list(range(len(streams))), 0
        self.iterating = False  # this process's iteration has begun (hosted and turn are its own)

    @property
    def mixer(self) -> TokenShareMixer:
        """The first stream's mixer (all a rank with one stream has)."""
        return self.streams[0].mixer

    @property
    def passes(self) -> int | None:
        return self.streams[0].passes

    @passes.setter
    def passes(self, value: int | None) -> None:
        for stream in self.streams:
            stream.passes = value

    def _host(self) -> None:
        """The streams this process hosts (none: a DataLoader worker beyond those that share them out evenly), and
        whose turn it is, with the loaded state's streams restored."""
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (0, 0)
        count = len(self.streams)
        hosting = hosting_workers(count, workers)
        self.hosted = [(self.offset + worker + i * hosting) % count for i in range(count // hosting)] if (
            worker < hosting) else []
        self.turn = 0
        if self.loaded_state is not None:
            self.turn = self.loaded_state["turn"]
            for index, state in self.loaded_state["streams"].items():
                self.streams[int(index)].load_state_dict(state)

    def __iter__(self):
        self._host()
        self.iterating = True
        if not self.hosted:
            return
        iterators = {index: iter(self.streams[index]) for index in self.hosted}
        while iterators:
            index = self.hosted[self.turn % len(self.hosted)]
            self.turn += 1
            # one stream hosted: its blocks as they come; several: a batch of each in turn
            for _ in range(self.blocks_per_batch if len(self.hosted) > 1 else 1):
                sample = next(iterators.get(index, iter(())), None)
                if sample is None:  # a finished stream (passes=1): the others go on
                    iterators.pop(index, None)
                    break
                yield sample

    def state_dict(self) -> dict:
        if not self.iterating:
            # asked before this process's iteration began (torchdata snapshots each worker as it starts): what the
            # iteration will host, or the sum over workers would count streams that another worker hosts too
            self._host()
        return {"streams": {str(index): self.streams[index].state_dict() for index in self.hosted},
                "turn": self.turn % len(self.hosted) if self.hosted else 0}

    def load_state_dict(self, state: dict) -> None:
        """torchdata's resume, with the worker count the state was saved with."""
        self.loaded_state = state

    def resume_streams(self, states: dict[int, dict]) -> None:
        """Every stream's state (from a checkpoint's workers, whatever their number): the next iteration goes on from
        them, its first batch from the stream whose turn it is."""
        for index, state in states.items():
            self.streams[index].load_state_dict(state)
        self.loaded_state = None
        # the rank's loader batches so far: the streams gave them in turn, so the next is this one's
        self.offset = sum(state["batches"] for state in states.values()) % len(self.streams)


def stream_states(loader_state) -> dict[int, dict]:
    """Every stream's state in a DataLoader's state, wherever torchdata's state nests its workers' (one worker, or
    several)."""
    if isinstance(loader_state, dict):
        if "streams" in loader_state and "turn" in loader_state:
            return {int(index): state for index, state in loader_state["streams"].items()}
        children = loader_state.values()
    elif isinstance(loader_state, (list, tuple)):
        children = loader_state
    else:
        return {}
    found = {}
    for child in children:
        found.update(stream_states(child))
    return found


def source_token_counts(streams: dict[int, dict], num_sources: int) -> list[int]:
    """The tokens per source of every block the streams (their states, `stream_states`) yielded since the data began."""
    counts = [np.asarray(state["tokens_by_source"], dtype=np.int64) for state in streams.values()]
    return np.sum(counts, axis=0).tolist() if counts else [0] * num_sources


def stage_token_counts(streams: dict[int, dict], num_stages: int, num_sources: int) -> list[list[int]]:
    """The tokens per data stage and source of every block the streams yielded since the data began."""
    counts = [np.asarray(state["tokens_by_stage"], dtype=np.int64) for state in streams.values()]
    return np.sum(counts, axis=0).tolist() if counts else [[0] * num_sources for _ in range(num_stages)]


def data_pass(streams: dict[int, dict]) -> int:
    """The latest pass over the data (1 for the first) that the streams' blocks came from."""
    return max((state["pass"] for state in streams.values()), default=0) + 1
