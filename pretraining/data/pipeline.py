"""The data pipeline assembled: sources -> hold-out -> rank split -> tokens -> shuffled reading -> token-share
mixing -> packed blocks."""

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
    mixture: list[MixtureSource] | None  # a mixture's sources (weights normalized), None for a single source
    stages: list[DataStage] | None  # a mixture's stages (one, from step 0, for --dataset_mixture)
    split_description: str  # how this rank's part of the stream is split from the others' ("whole" for one rank)


def packed_streams(make_readers, stage_weights: list[list[float]], block_size: int, streams: int,
                   blocks_per_batch: int, **kwargs) -> PackedDataset:
    """`streams` block streams (as many as the scarcest source has shards, at most), each mixing readers of its own
    (`make_readers()`), as one dataset."""
    mixers = [TokenShareMixer(make_readers(), stage_weights)]
    count = min(streams, mixers[0].num_shards)
    mixers += [TokenShareMixer(make_readers(), stage_weights) for _ in range(1, count)]
    return PackedDataset([BlockStream(mixer, block_size, index=index, count=count, **kwargs)
                          for index, mixer in enumerate(mixers)], blocks_per_batch)


def single_source_packer(tokenized: IterableDataset, block_size: int, shuffle: Shuffle, tokenizer, read_error=None,
                         streams: int = 1, blocks_per_batch: int = 1, **kwargs) -> PackedDataset:
    """A packer over one tokenized stream."""
    return packed_streams(lambda: [SourceReader(tokenized, 0, shuffle, token_dtype(len(tokenizer)),
                                                read_error=read_error)], [[1.0]], block_size, streams,
                          blocks_per_batch, eos_token_id=tokenizer.eos_token_id, **kwargs)


def eval_blocks(stream: IterableDataset | None, tokenizer, data_args: DataArguments, data_name: str) -> Dataset | None:
    """The first `max_eval_samples` packed blocks of `stream` (in file order), materialised once (they are few) so
    that every evaluation sees the same data without re-streaming it. `data_name` names the data in errors."""
    if stream is None:
        return None
    packed = single_source_packer(tokenize_stream(stream, tokenizer, data_args.text_column), data_args.block_size,
                                  NO_SHUFFLE, tokenizer, passes=1, document_masking=data_args.document_masking)
    samples = list(islice(packed, data_args.max_eval_samples))
    if not samples:
        raise DataError(f"{data_name} holds fewer than block_size={data_args.block_size} tokens: use more "
                        "--validation_documents, a larger --validation_file or a smaller --block_size")
    columns = {key: [sample[key] for sample in samples] for key in samples[0] if key != "data_pass"}
    return Dataset.from_dict(columns).with_format("torch")


def build_datasets(data_args: DataArguments, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 42,
                   blocks_per_batch: int = 1, batches_per_step: int = 1, streams: int = 1) -> TrainingData:
    """This rank's training stream and the evaluation data.

    Validation is `--validation_file`, else the first `validation_documents` documents of the stream (in file
    order), which training never sees: of each source's stream in a mixture, and the eval data is then a dict of
    source name -> its blocks. With several processes each rank trains on its own part of the stream
    (`rank_split`; in a mixture, each source's stream on its own). The training stream is shuffled with `seed`
    (`--shuffle_buffer`); data stages switch at the steps that `blocks_per_batch` x `batches_per_step` blocks a step
    make (per_device_train_batch_size, gradient_accumulation_steps). `streams`: the rank's block streams (the run's
    first DataLoader worker count; see packing.PackedDataset).
    """
    shuffle = Shuffle(data_args.shuffle_buffer, data_args.shuffle_shards, seed)
    dtype = token_dtype(len(tokenizer))
    evaluation = None
    holding_out = not data_args.validation_file and data_args.validation_documents > 0
    if data_args.validation_file:
        eval_stream = load_text_stream(expand_files(data_args.validation_file), data_args.text_column,
                                       streaming=data_args.streaming, split="validation")
        evaluation = eval_blocks(eval_stream, tokenizer, data_args, "validation data")
    packing = {"document_masking": data_args.document_masking, "streams": streams,
               "blocks_per_batch": blocks_per_batch}
    if data_args.mixture:
        tokenized, held_out, descriptions = [], {}, []
        for index, source in enumerate(data_args.mixture):
            stream = load_source(source, data_args.text_column, data_args.streaming)
            if holding_out:
                eval_stream, stream = hold_out(stream, data_args.validation_documents, data_args.text_column)
                held_out[source.name] = eval_blocks(eval_stream, tokenizer, data_args,
                                                    f"the held-out documents of {source.name!r}")
                if next(iter(stream.take(1)), None) is None:
                    raise DataError(f"dataset_mixture source {source.name!r}: no documents left to train on after "
                                    f"holding out the first {data_args.validation_documents} for evaluation (lower "
                                    "--validation_documents)")
            stream, description = rank_split(stream, rank, world_size, digest_column=data_args.text_column)
            check_rank_part(stream, rank, world_size, description, f"dataset_mixture source {source.name!r}")
            descriptions.append(f"{source.name}: {description}")
            read_error = (partial(bad_record, source.files, source.text_column) if source.files
                          else partial(unreadable, f"dataset_mixture source {source.name!r}"))
            tokenized.append((tokenize_stream(stream, tokenizer, data_args.text_column), read_error))
        evaluation = held_out or evaluation
        stages = data_args.stages
        if len(stages) > 1:
            packing["stages"] = StageSchedule(tuple(stage.start_step for stage in stages), blocks_per_batch,
                                              batches_per_step)
        train = packed_streams(
            lambda: [SourceReader(stream, index, shuffle, dtype, read_error=read_error)
                     for index, (stream, read_error) in enumerate(tokenized)],
            stage_sources(stages)[1], data_args.block_size, eos_token_id=tokenizer.eos_token_id, **packing)
        split_description = "; ".join(descriptions)
    else:
        train_files = expand_files(data_args.train_file)
        stream = load_text_stream(train_files, data_args.text_column, dataset_name=data_args.dataset_name,
                                  dataset_config_name=data_args.dataset_config_name, streaming=data_args.streaming)
        if holding_out:
            eval_stream, stream = hold_out(stream, data_args.validation_documents, data_args.text_column)
            evaluation = eval_blocks(eval_stream, tokenizer, data_args, "validation data")
        stream, split_description = rank_split(stream, rank, world_size)
        check_rank_part(stream, rank, world_size, split_description, "the training data")
        read_error = (partial(bad_record, train_files, data_args.text_column) if train_files
                      else partial(unreadable, f"{data_args.dataset_name} ({data_args.dataset_config_name})"))
        train = single_source_packer(tokenize_stream(stream, tokenizer, data_args.text_column), data_args.block_size,
                                     shuffle, tokenizer, read_error=read_error, **packing)
    return TrainingData(train, evaluation, data_args.mixture, data_args.stages, split_description)
