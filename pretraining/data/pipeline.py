"""The data pipeline assembled, one path for a single source and a mixture (a single source is a mixture of one):
each source -> hold-out -> rank split -> tokens, then shuffled reading -> token-share mixing -> packed blocks; the
evaluation blocks through the same reading, mixing and packing, in file order."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import islice

from datasets import Dataset, IterableDataset

from pretraining.data.arguments import DataArguments
from pretraining.data.files import bad_record, expand_files, unreadable
from pretraining.data.mixing import TokenShareMixer
from pretraining.data.mixture import DataStage, MixtureSource, stage_sources
from pretraining.data.packing import BlockStream, PackedDataset, StageSchedule
from pretraining.data.reading import NO_SHUFFLE, Shuffle, SourceReader, token_dtype
from pretraining.data.sources import load_source, load_text_stream
from pretraining.data.splits import check_rank_part, hold_out, rank_split
from pretraining.data.tokenize import tokenize_stream
from pretraining.errors import DataError


@dataclass
class TrainingData:
    """What `build_datasets` returns."""

    train: PackedDataset  # this rank's endless stream of packed training blocks
    evaluation: Dataset | dict[str, Dataset] | None  # the eval blocks; a mixture's: source name -> its blocks
    sources: list[MixtureSource]  # what is trained on, in the packer's order: a mixture's sources, or the one source
    stages: list[DataStage] | None  # a mixture's stages (one, from step 0, for --dataset_mixture)
    split_description: str  # how this rank's part of the stream is split from the others' ("whole" for one rank)


@dataclass
class TokenizedSource:
    """One source's documents as this rank reads them, tokenized, and how a record that cannot be read is named
    (None: as "the training data")."""

    stream: IterableDataset
    read_error: Callable[[Exception], DataError] | None = None


def pack_sources(sources: list[TokenizedSource], block_size: int, shuffle: Shuffle, tokenizer, streams: int = 1,
                 blocks_per_batch: int = 1, stage_weights: list[list[float]] | None = None, **kwargs) -> PackedDataset:
    """`sources` read (`shuffle`), mixed by token shares (`stage_weights`: per data stage, one weight per source;
    None: one stage, equal shares) and packed into blocks: `streams` block streams (as many as the scarcest source has
    shards, at most), each with readers of its own, as one dataset. `kwargs` go to every `BlockStream` (passes,
    stages, document_masking)."""
    dtype = token_dtype(len(tokenizer))
    stage_weights = stage_weights or [[1 / len(sources)] * len(sources)]

    def mixer():
        return TokenShareMixer([SourceReader(source.stream, index, shuffle, dtype, read_error=source.read_error)
                                for index, source in enumerate(sources)], stage_weights)

    mixers = [mixer()]
    count = min(streams, mixers[0].num_shards)
    mixers += [mixer() for _ in range(1, count)]
    return PackedDataset([BlockStream(mixer, block_size, index=index, count=count, blocks_per_batch=blocks_per_batch,
                                      eos_token_id=tokenizer.eos_token_id, **kwargs)
                          for index, mixer in enumerate(mixers)])


def eval_blocks(stream: IterableDataset | None, tokenizer, data_args: DataArguments, data_name: str) -> Dataset | None:
    """The first `max_eval_samples` packed blocks of `stream` (in file order), materialised once (they are few) so
    that every evaluation sees the same data without re-streaming it. `data_name` names the data in errors."""
    if stream is None:
        return None
    tokenized = TokenizedSource(tokenize_stream(stream, tokenizer, data_args.text_column),
                                partial(unreadable, data_name))
    packed = pack_sources([tokenized], data_args.block_size, NO_SHUFFLE, tokenizer, passes=1,
                          document_masking=data_args.document_masking)
    samples = list(islice(packed, data_args.max_eval_samples))
    if not samples:
        raise DataError(f"{data_name} holds fewer than block_size={data_args.block_size} tokens: use more "
                        "--validation_documents, a larger --validation_file or a smaller --block_size")
    return Dataset.from_dict({key: [sample[key] for sample in samples] for key in samples[0]}).with_format("torch")


def the_one_source(data_args: DataArguments) -> MixtureSource:
    """`--train_file` or `--dataset_name` as a mixture of one, named as a mixture would name it."""
    if data_args.train_file:
        return MixtureSource(data_args.train_file, 1.0, data_args.train_file, None, None, data_args.text_column)
    name = data_args.dataset_name + (f":{data_args.dataset_config_name}" if data_args.dataset_config_name else "")
    return MixtureSource(name, 1.0, None, data_args.dataset_name, data_args.dataset_config_name,
                         data_args.text_column)


def build_datasets(data_args: DataArguments, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 42,
                   blocks_per_batch: int = 1, streams: int = 1, stage_batches: list[int] | None = None) -> TrainingData:
    """This rank's training stream and the evaluation data.

    Validation is `--validation_file`, else the first `validation_documents` documents of each source's stream (in
    file order), which training never sees; a mixture's eval data is a dict of source name -> its blocks. With several
    processes each rank trains on its own part of each source (`rank_split`). The training stream is shuffled with
    `seed` (`--shuffle_buffer`), in `streams` block streams (the run's first DataLoader worker count; see
    packing.PackedDataset) that the loader takes batches of `blocks_per_batch` blocks from in turn. With data stages,
    `stage_batches` are the loader batches at which they start (run_state.RunState.batch_of_step of their steps).
    """
    mixed = data_args.mixture is not None
    sources = data_args.mixture or [the_one_source(data_args)]
    stages = data_args.stages or [DataStage(0, sources)]
    if len(stages) > 1 and (stage_batches is None or len(stage_batches) != len(stages)):
        raise ValueError(f"{len(stages)} data stages need the loader batch each starts at, got {stage_batches}")
    evaluation = None
    if data_args.validation_file:
        eval_stream = load_text_stream(expand_files(data_args.validation_file), data_args.text_column,
                                       streaming=data_args.streaming, split="validation")
        evaluation = eval_blocks(eval_stream, tokenizer, data_args, "validation data")
    holding_out = not data_args.validation_file and data_args.validation_documents > 0
    tokenized, held_out, descriptions = [], {}, []
    for source in sources:
        where = f"dataset_mixture source {source.name!r}" if mixed else None
        stream = load_source(source, data_args.text_column, data_args.streaming, where)
        if holding_out:
            eval_stream, stream = hold_out(stream, data_args.validation_documents, data_args.text_column)
            held_out[source.name] = eval_blocks(eval_stream, tokenizer, data_args, f"the held-out documents of "
                                                f"{source.name!r}" if mixed else "validation data")
            if next(iter(stream.take(1)), None) is None:
                raise DataError(f"{where or 'the training data'}: no documents left to train on after holding out "
                                f"the first {data_args.validation_documents} for evaluation (lower "
                                "--validation_documents)")
        stream, description = rank_split(stream, rank, world_size, digest_column=data_args.text_column)
        check_rank_part(stream, rank, world_size, description, where or "the training data")
        descriptions.append(f"{source.name}: {description}" if mixed else description)
        read_error = (partial(bad_record, source.files, source.text_column) if source.files
                      else partial(unreadable, where or f"{source.dataset_name} ({source.dataset_config_name})"))
        tokenized.append(TokenizedSource(tokenize_stream(stream, tokenizer, data_args.text_column), read_error))
    if holding_out:
        evaluation = held_out if mixed else held_out[sources[0].name]
    schedule = StageSchedule(tuple(stage_batches)) if len(stages) > 1 else None
    train = pack_sources(tokenized, data_args.block_size, Shuffle(data_args.shuffle_buffer, data_args.shuffle_shards,
                                                                  seed), tokenizer, streams, blocks_per_batch,
                         stage_sources(stages)[1], stages=schedule, document_masking=data_args.document_masking)
    return TrainingData(train, evaluation, sources, data_args.stages, "; ".join(descriptions))
