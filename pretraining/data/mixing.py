"""Mixing sources by token shares: the next document comes from the source furthest below its share of the tokens
drawn so far, so that "60% A, 40% B" is 60% of the tokens whatever the sources' document lengths (as in SmolLM2's
own, Dolma's and FineWeb's recipes). A mixture with data stages (`--data_stages`) has one set of weights per stage,
and the shares count the tokens drawn in the current stage. One source is a mixture of one.

The draw is deterministic (the largest deficit, ties to the larger weight, then the lower index), so the mixer's
state is its counts; each source's order and shuffling is its `SourceReader`'s.
"""

import numpy as np

from pretraining.data.reading import SourceReader


class TokenShareMixer:
    """Documents from `readers` by token share. A pass over the mixture ends once every source with a positive weight
    in the current stage has run out at least once; a source that runs out before the others starts its next pass
    while they go on, so that its share holds whatever its size."""

    def __init__(self, readers: list[SourceReader], stage_weights: list[list[float]]):
        self.readers = readers
        self.stage_weights = stage_weights  # per stage, one weight per reader (0: not in that stage)
        self.reset()

    def reset(self) -> None:
        """Back to before the first pass."""
        count = len(self.readers)
        self.stage = 0
        self.drawn = [0] * count  # tokens drawn from each source in the current stage
        self.exhausted = [False] * count  # sources that ran out in the current pass
        self.empty = [False] * count  # sources whose part holds no document (the others go on without them)
        for reader in self.readers:
            reader.reset()

    @property
    def num_shards(self) -> int:
        """The shards of the scarcest source: a DataLoader worker takes part only if every source has one for it."""
        return min(reader.tokenized.num_shards for reader in self.readers)

    def bind(self, worker: int, workers: int) -> None:
        for reader in self.readers:
            reader.bind(worker, workers)

    def start_pass(self) -> None:
        self.exhausted, self.empty = [False] * len(self.readers), [False] * len(self.readers)
        for reader in self.readers:
            reader.start_pass()

    def next_document(self, stage: int = 0) -> tuple[np.ndarray, int] | None:
        """(the tokens of the next document, its source), or None when the pass is over."""
        if stage != self.stage:  # a new stage: its shares count its own tokens
            self.stage, self.drawn = stage, [0] * len(self.readers)
        weights = self.stage_weights[stage]
        while True:
            active = [i for i, weight in enumerate(weights) if weight > 0 and not self.empty[i]]
            if not active:
                return None
            total = sum(self.drawn)
            source = max(active, key=lambda i: (weights[i] * total - self.drawn[i], weights[i], -i))
            document = self.readers[source].next_document()
            if document is None:  # the source ran out: it starts again, unless every source has run out
                self.exhausted[source] = True
                if all(self.exhausted[i] for i in active):
                    return None
                self.readers[source].start_pass()
                document = self.readers[source].next_document()
                if document is None:  # a source with nothing in its part: the others go on
                    self.empty[source] = True
                    continue
            self.drawn[source] += len(document)
            return document, source

    def state_dict(self) -> dict:
        return {"readers": [reader.state_dict() for reader in self.readers], "stage": self.stage,
                "drawn": list(self.drawn), "exhausted": list(self.exhausted), "empty": list(self.empty)}

    def load_state_dict(self, state: dict) -> None:
        for reader, reader_state in zip(self.readers, state["readers"], strict=True):
            reader.load_state_dict(reader_state)
        self.stage, self.drawn = state["stage"], list(state["drawn"])
        self.exhausted, self.empty = list(state["exhausted"]), list(state["empty"])
