"""Which documents go where: the evaluation hold-out, and each rank's part of the training stream."""

import hashlib

from datasets import Dataset, IterableDataset

from pretraining.errors import DataError


def document_key(text: str) -> bytes:
    """A stable digest of a document (Python's hash() differs between processes, e.g. spawned workers)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def hold_out(stream: IterableDataset, count: int, text_column: str) -> tuple[IterableDataset | None, IterableDataset]:
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


def rank_split(stream: IterableDataset, rank: int, world_size: int,
               digest_column: str) -> tuple[IterableDataset, str]:
    """This rank's part of the stream, and a description of how it is split.

    Whole shards whenever there are at least as many shards as ranks (a rank may get one more than another: the
    end-of-pass handling absorbs the difference). Else every rank reads and parses all of it and keeps the documents
    whose digest (of their text, `digest_column`) falls to it: not every world_size-th document, because ranks whose
    other sources have different shard counts split this one differently between their DataLoader workers, and a
    position would then name different documents on different ranks.

    Each source of a mixture is split on its own before the mixing, the same way for a single source (a mixture of
    one): hence `IterableDataset.shard` for whole shards, the split that `split_dataset_by_node` makes of them.
    """
    if world_size == 1:
        return stream, "whole"
    if stream.num_shards >= world_size:
        return stream.shard(num_shards=world_size, index=rank, contiguous=False), \
            f"{stream.num_shards} shards split between {world_size} ranks"
    fn_kwargs = {"rank": rank, "world_size": world_size, "text_column": digest_column}
    return stream.filter(falls_to_rank, batched=True, batch_size=256, fn_kwargs=fn_kwargs), \
        (f"{stream.num_shards} shard(s) for {world_size} ranks: every rank reads all, keeps the documents whose digest "
         "falls to it")


def falls_to_rank(batch: dict, rank: int, world_size: int, text_column: str) -> list[bool]:
    return [int.from_bytes(document_key(text)[:8], "little") % world_size == rank for text in batch[text_column]]


def check_rank_part(stream: IterableDataset, rank: int, world_size: int, split_description: str,
                    data_name: str) -> None:
    """A rank's part must hold a document: a rank with no data would stop while the others wait for it in a
    collective, and a mixture cannot draw from an empty source."""
    if world_size > 1 and next(iter(stream), None) is None:
        raise DataError(f"{data_name}: rank {rank} of {world_size} gets none of its documents ({split_description}): "
                        "use more data or fewer ranks")
