"""Shuffled reading (pretraining/data/reading.py): an 8-shard corpus read from across its shards from the first
documents, in a seeded order that is not the files', a new one every pass, every document once per pass, and an
exact resume (the shuffle buffer's content is in the state) with 0 and 2 DataLoader workers."""

import itertools

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from helpers import batches_and_passes, cut_and_resume, data_args, documents_read, saved_and_loaded, write_jsonl
from pretraining.data import build_datasets, collate_blocks, stream_states

SHARDS, PER_SHARD = 8, 40


@pytest.fixture
def corpus_of_8_shards(tmp_path):
    """8 files of 40 documents each; document i of file k says so (and has a length of its own)."""
    texts = [[f"shard {k} document {i} " + "word " * ((i * 7 + k) % 13) for i in range(PER_SHARD)]
             for k in range(SHARDS)]
    for k, shard in enumerate(texts):
        write_jsonl(tmp_path / f"part{k}.jsonl", shard)
    return str(tmp_path / "part*.jsonl"), texts


def shuffled(pattern, **overrides):
    """The default shuffling (8 shards at once), with a buffer of 50 documents (of the corpus's 320)."""
    values = dict(train_file=pattern, block_size=16, shuffle_buffer=50, shuffle_shards=8)
    return data_args(**{**values, **overrides})


def read_texts(tokenizer, packer):
    return [tokenizer.decode(document[:-1]) for document in documents_read(packer)[0]]


def test_the_first_documents_come_from_across_the_shards_in_no_file_order(corpus_of_8_shards, tokenizer):
    pattern, texts = corpus_of_8_shards
    in_file_order = [text for shard in texts for text in shard]
    first = read_texts(tokenizer, build_datasets(shuffled(pattern), tokenizer, seed=1).train)
    assert sorted(first) == sorted(in_file_order)  # every document once in the pass: none lost, none repeated
    assert first != in_file_order
    shards_of_first_20 = {int(text.split()[1]) for text in first[:20]}
    assert len(shards_of_first_20) >= 6, shards_of_first_20  # all 8 shards read at once, through the buffer
    # file order within no shard either: the buffer draws at random
    assert [text for text in first if text.startswith("shard 0 ")] != texts[0]
    other_seed = read_texts(tokenizer, build_datasets(shuffled(pattern), tokenizer, seed=2).train)
    assert sorted(other_seed) == sorted(first) and other_seed != first
    again = read_texts(tokenizer, build_datasets(shuffled(pattern), tokenizer, seed=1).train)
    assert again == first  # the same seed, the same order


def test_each_pass_has_a_new_order_and_every_document_once(corpus_of_8_shards, tokenizer):
    pattern, texts = corpus_of_8_shards
    reader = build_datasets(shuffled(pattern), tokenizer).train.mixer.readers[0]
    passes = []
    for _ in range(3):
        reader.start_pass()
        documents = []
        while (document := reader.next_document()) is not None:
            documents.append(tokenizer.decode(document[:-1]))
        passes.append(documents)
    assert all(sorted(documents) == sorted(passes[0]) for documents in passes)
    assert len(passes[0]) == SHARDS * PER_SHARD and len(set(passes[0])) == SHARDS * PER_SHARD
    assert passes[0] != passes[1] != passes[2] != passes[0]


def test_fewer_shards_at_once_read_fewer_at_first(corpus_of_8_shards, tokenizer):
    pattern, _ = corpus_of_8_shards
    first = read_texts(tokenizer, build_datasets(shuffled(pattern, shuffle_shards=2, shuffle_buffer=4), tokenizer).train)
    assert len({int(text.split()[1]) for text in first[:20]}) <= 4  # two shards, the next two, ...


def test_two_workers_read_their_own_shards_and_together_all(corpus_of_8_shards, tokenizer):
    pattern, texts = corpus_of_8_shards
    read = read_texts(tokenizer, build_datasets(shuffled(pattern), tokenizer, streams=2).train)
    assert sorted(read) == sorted(text for shard in texts for text in shard)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_shuffled_stream_resumes_exactly_in_any_pass(corpus_of_8_shards, tokenizer, num_workers):
    """A state saved anywhere (a DataLoader reads ahead before it is saved), with documents in the shuffle buffer and
    shards half read, in the first pass or a later one, resumes with the same blocks."""
    pattern, _ = corpus_of_8_shards
    args = shuffled(pattern, block_size=32)

    def loader():
        train = build_datasets(args, tokenizer, streams=max(1, num_workers), blocks_per_batch=2).train
        return StatefulDataLoader(train, batch_size=2, num_workers=num_workers,
                                  collate_fn=collate_blocks)

    full = list(batches_and_passes(loader(), 150))
    assert full[-1][1] >= 2, "the run should go on into a later pass"
    for cut in (3, 40, 120):
        head, second, _ = cut_and_resume(loader, cut)
        rest = [batch["input_ids"] for batch in itertools.islice(second, 150 - cut)]
        assert all(torch.equal(a, b) for a, (b, _) in zip(head + rest, full, strict=True)), cut


def test_the_buffer_is_saved_in_uint16(corpus_of_8_shards, tokenizer):
    """The state holds the buffer's documents as uint16 token ids (49,152 ids fit) and their lengths."""
    pattern, _ = corpus_of_8_shards
    train = build_datasets(shuffled(pattern), tokenizer).train
    next(iter(train))
    reader_state = train.state_dict()["streams"]["0"]["mixer"]["readers"][0]
    assert reader_state["buffer"].dtype == torch.uint16
    assert len(reader_state["buffer_lengths"]) == 50 - 1  # the buffer refills one a draw: full, less the one drawn
    assert int(reader_state["buffer_lengths"].sum()) == len(reader_state["buffer"])


@pytest.mark.parametrize("before, after", [(2, 0), (2, 1), (0, 2), (4, 2)])
def test_the_worker_count_may_change_on_resume(corpus_of_8_shards, tokenizer, before, after):
    """The run's streams are fixed by its first start (one per worker then); a resume with another worker count
    (the app's path: every stream's state from the checkpoint's loader state) gives the uninterrupted run's batches.
    From 0 workers there is one stream: 2 workers then host it in one (the other takes no part)."""
    pattern, _ = corpus_of_8_shards
    args = shuffled(pattern, block_size=32)

    def loader(workers, state=None):
        train = build_datasets(args, tokenizer, streams=max(1, before), blocks_per_batch=2).train
        if state is not None:
            train.resume_streams(stream_states(state))
        return StatefulDataLoader(train, batch_size=2, num_workers=workers, collate_fn=collate_blocks)

    full = [batch["input_ids"] for batch in itertools.islice(loader(before), 60)]
    for cut in (6, 31):
        first = loader(before)
        iterator = iter(first)
        head = [next(iterator)["input_ids"] for _ in range(cut)]
        state = saved_and_loaded(first.state_dict())
        del iterator
        rest = [batch["input_ids"] for batch in itertools.islice(loader(after, state), 60 - cut)]
        assert all(torch.equal(a, b) for a, b in zip(head + rest, full, strict=True)), cut
