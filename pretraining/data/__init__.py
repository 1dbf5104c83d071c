"""Streaming data for pretraining: text stream -> tokens (EOS between documents) -> packed blocks.

The same path serves the Hub corpus (`HuggingFaceTB/smollm-corpus`, `cosmopedia-v2`), local files
(jsonl/json/parquet/csv/txt) and mixtures of them (a single source is a mixture of one): everything is a `datasets`
IterableDataset, tokenized lazily with a batched `map`, then packed into `block_size` samples with no padding,
resumable in O(1). One job per module:

    arguments.py  DataArguments (the flags)          files.py     local files: builders, start-up checks
    mixture.py    --dataset_mixture, --data_stages    sources.py   files or a Hub dataset as a document stream
    splits.py     evaluation hold-out, rank split     tokenize.py  documents -> token ids + EOS
    reading.py    a source's shuffled reading         mixing.py    sources mixed by token shares, per stage
    packing.py    PackedDataset: blocks, resume       collate.py   blocks -> a batch
    pipeline.py   build_datasets: all of it assembled, for one rank
"""

from pretraining.data.arguments import DataArguments
from pretraining.data.collate import collate_blocks
from pretraining.data.packing import (PackedDataset, data_pass, source_token_counts, stage_token_counts,
                                      stream_states)
from pretraining.data.pipeline import TrainingData, build_datasets

__all__ = ["DataArguments", "PackedDataset", "TrainingData", "build_datasets", "collate_blocks", "data_pass",
           "source_token_counts", "stage_token_counts", "stream_states"]
