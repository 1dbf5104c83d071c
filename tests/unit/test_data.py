"""pretraining/data: streaming, tokenizing with EOS, packing, O(1) resume, hold-out, workers, rank split, bad files."""

import copy
import itertools
import json

import pytest
import torch
from datasets import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

import numpy as np

from helpers import (batches_and_passes, cut_and_resume, data_args, doc_tokens, documents_read, packed,
                     saved_and_loaded, write_jsonl)
from pretraining.data import build_datasets, collate_blocks, data_pass, source_token_counts, stream_states
from pretraining.data.mixing import TokenShareMixer
from pretraining.data.packing import BlockStream
from pretraining.data.reading import NO_SHUFFLE, SourceReader
from pretraining.data.files import CHECKED_RECORDS
from pretraining.data.sources import load_text_stream
from pretraining.errors import DataError


def test_packing_concatenates_documents_with_eos_and_no_padding(tmp_path, tokenizer):
    texts = [f"Document {i}: " + "word " * (i % 37) for i in range(60)]
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    blocks = list(packed([path], tokenizer, block_size=32))
    stream = doc_tokens(tokenizer, texts)
    assert len(blocks) == len(stream) // 32  # only the final partial block is dropped
    assert all(b["input_ids"].shape == (32,) and torch.equal(b["input_ids"], b["labels"]) for b in blocks)
    packed_tokens = torch.cat([b["input_ids"] for b in blocks]).tolist()
    assert packed_tokens == stream[: 32 * len(blocks)]
    # the packer's own output, cut at its EOS tokens: each document's tokens in order, one EOS after each
    ends = [i for i, token in enumerate(packed_tokens) if token == tokenizer.eos_token_id]
    pieces = [packed_tokens[start + 1 : end] for start, end in zip([-1] + ends, ends)]
    assert pieces == [tokenizer(text)["input_ids"] for text in texts[: len(ends)]]
    assert len(texts) - 2 <= len(ends) < len(texts)  # the last documents' ends fell in the dropped partial block


@pytest.mark.parametrize("setup", ["plain", "split_special_tokens", "truncation_enabled"])
def test_tokens_are_what_the_tokenizer_call_gives(tmp_path, tokenizer, setup):
    """The pipeline calls the Rust tokenizer itself (IdsEncoder): same ids as `tokenizer(text)` whatever the
    tokenizer's settings, special-token strings and Unicode; an empty document is skipped (no lone EOS)."""
    tokenizer = copy.deepcopy(tokenizer)
    if setup == "split_special_tokens":
        tokenizer.split_special_tokens = True
    elif setup == "truncation_enabled":  # a tokenizer.json may ship with truncation on; the call turns it off
        tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    texts = ["Hello <|im_start|>user\nhi<|im_end|>", "", "  tabs\tand\nnewlines  ", "é 🙂 ünïcode", "<|endoftext|>x"] * 7
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    blocks = list(packed([path], tokenizer, block_size=8))
    expected = doc_tokens(tokenizer, [text for text in texts if text])
    assert torch.cat([b["input_ids"] for b in blocks]).tolist() == expected[: 8 * len(blocks)]
    assert len(blocks) == len(expected) // 8 > 10
    assert (setup == "split_special_tokens") == (1 not in expected)  # <|im_start|> is id 1 unless split


def test_resume_from_state_continues_mid_document(tmp_path, tokenizer):
    texts = [("long document %d " % i) * 30 for i in range(40)]  # documents span several blocks
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    full = [b["input_ids"].tolist() for b in packed([path], tokenizer, 48)]
    for cut in (1, 5, len(full) // 2):
        first = packed([path], tokenizer, 48)
        head = [b["input_ids"].tolist() for b in itertools.islice(first, cut)]
        state = saved_and_loaded(first.state_dict())
        assert len(state["streams"]["0"]["leftover"]), "the cut should fall inside a document"
        resumed = packed([path], tokenizer, 48)
        resumed.load_state_dict(state)
        assert head + [b["input_ids"].tolist() for b in resumed] == full


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_stateful_dataloader_workers_resume_exactly(tmp_path, tokenizer, num_workers):
    files = [write_jsonl(tmp_path / f"part{k}.jsonl", [f"file {k} doc {i} " * (3 + i % 11) for i in range(50)])
             for k in range(2)]

    def loader():
        return StatefulDataLoader(packed(files, tokenizer, 32, streams=max(1, num_workers), blocks_per_batch=4),
                                  batch_size=4, num_workers=num_workers)

    full = [batch["input_ids"] for batch in loader()]
    assert len(full) > 6
    # each stream reads its own files (two workers: a file each) and the batches come from the streams in turn: each
    # stream's batches are its files' tokens in order, nothing twice, nothing lost but its last partial block
    texts = [[json.loads(line)["text"] for line in open(f)] for f in files]
    streams = [texts[0] + texts[1]] if num_workers < 2 else texts
    for index, stream_texts in enumerate(streams):
        tokens = torch.cat(full[index::len(streams)]).flatten().tolist()
        expected = doc_tokens(tokenizer, stream_texts)
        assert tokens == expected[: len(expected) // 32 * 32], index
    head, second, _ = cut_and_resume(loader, 3)
    rest = [batch["input_ids"] for batch in second]
    assert all(torch.equal(a, b) for a, b in zip(head + rest, full)) and len(head + rest) == len(full)


def test_a_resume_saved_again_before_every_worker_has_read_goes_on_exactly(tmp_path, tokenizer):
    """The app's resume (`resume_streams`, then the loader) with two workers, and its state taken again at once, when
    only one worker has given a batch (a checkpoint at the first step after a resume): that state holds every stream
    once, where it stands, so the token counts are the uninterrupted run's and a second resume goes on exactly."""
    files = [write_jsonl(tmp_path / f"part{k}.jsonl", [f"file {k} doc {i} " * (3 + i % 11) for i in range(50)])
             for k in range(2)]

    def loader(state=None):
        dataset = packed(files, tokenizer, 32, streams=2, blocks_per_batch=4)
        if state is not None:
            dataset.resume_streams(stream_states(saved_and_loaded(state)))
        return StatefulDataLoader(dataset, batch_size=4, num_workers=2)

    full, counts = [], []
    for batch in (uninterrupted := loader()):
        full.append(batch["input_ids"])
        counts.append(source_token_counts(stream_states(uninterrupted.state_dict()), 1))
    first = loader()
    iterator = iter(first)
    head = [next(iterator)["input_ids"] for _ in range(3)]
    state = first.state_dict()
    del iterator
    second = loader(state)
    iterator = iter(second)
    head.append(next(iterator)["input_ids"])
    state = second.state_dict()  # the second worker has not given a batch since the resume
    assert source_token_counts(stream_states(state), 1) == counts[3]
    del iterator
    rest = [batch["input_ids"] for batch in loader(state)]
    assert len(head + rest) == len(full) and all(torch.equal(a, b) for a, b in zip(head + rest, full))


def test_validation_is_held_out_from_the_start_of_the_stream(tmp_path, tokenizer):
    texts = [f"unique document number {i} " * 8 for i in range(100)]
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    data = build_datasets(data_args(train_file=path, validation_documents=10, block_size=16), tokenizer)
    train, evaluation = data.train, data.evaluation
    held_out = doc_tokens(tokenizer, texts[:10])
    assert evaluation[0]["input_ids"].tolist() == held_out[:16]
    first_train = next(iter(train))["input_ids"].tolist()
    assert first_train == doc_tokens(tokenizer, texts[10:])[:16]


def test_validation_file(corpus, tokenizer):
    train_file, validation_file = corpus
    data = build_datasets(
        data_args(train_file=train_file, validation_file=validation_file, block_size=128, max_eval_samples=5), tokenizer)
    train, evaluation = data.train, data.evaluation
    assert len(evaluation) == 5 and evaluation[0]["input_ids"].shape == (128,)
    assert next(iter(train))["input_ids"].shape == (128,)


@pytest.mark.parametrize("content, expected", [
    ('{"text": "ok"}\n{"text": "broken"\n', r"invalid JSON in .*a\.jsonl at line 2"),
    ('{"text": "ok"}\n{"body": "x", "id": 1}\n', r"text column 'text' not found in .*a\.jsonl line 2 \(columns: body, id\)"),
    ("", r"data file is empty: .*a\.jsonl"),
    ("\n\n", r"data file has no records: .*a\.jsonl"),
    ('["not an object"]\n', r"invalid JSON in .*a\.jsonl at record 1: expected an object"),
])
def test_bad_json_files_are_named(tmp_path, content, expected):
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_text_stream([str(path)], "text")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_text_stream([str(tmp_path / "nope.jsonl")], "text")
    (tmp_path / "a.xml").write_text("<a/>")
    with pytest.raises(DataError, match=r"unsupported data file type '\.xml'"):
        load_text_stream([str(tmp_path / "a.xml")], "text")


def test_csv_parquet_and_text_files_stream_the_same_way(tmp_path, tokenizer):
    import pandas as pd

    texts = [f"row {i} of a table " * 5 for i in range(30)]
    frame = pd.DataFrame({"id": range(30), "text": texts})
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet")
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n")
    expected = [b["input_ids"].tolist() for b in packed([write_jsonl(tmp_path / "a.jsonl", texts)], tokenizer, 32)]
    for name in ("a.csv", "a.parquet", "a.txt"):
        assert [b["input_ids"].tolist() for b in packed([str(tmp_path / name)], tokenizer, 32)] == expected, name
    frame.drop(columns="text").to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"text column 'text' not found in .*b\.parquet \(columns: id\)"):
        load_text_stream([str(tmp_path / "b.parquet")], "text")


def test_held_out_documents_are_never_trained_on_with_workers(tmp_path, tokenizer):
    texts = [f"document {i} is unique." for i in range(200)]
    for k in range(2):
        write_jsonl(tmp_path / f"part{k}.jsonl", texts[k::2])
    data = build_datasets(data_args(train_file=str(tmp_path / "part*.jsonl"), validation_documents=10, block_size=16),
                          tokenizer, streams=2, blocks_per_batch=4)
    train, evaluation = data.train, data.evaluation
    train.passes = 1  # endless otherwise
    held_out = texts[0:20:2]  # the stream reads part0 first
    assert tokenizer.decode(evaluation[0]["input_ids"]).startswith(held_out[0])
    loader = StatefulDataLoader(train, batch_size=4, num_workers=2)
    trained = tokenizer.decode(torch.cat([batch["input_ids"].flatten() for batch in loader]))
    assert not any(text in trained for text in held_out)
    # batches of the two workers interleave, so documents cut between blocks do not decode whole: most do
    assert sum(text in trained for text in texts) > 0.8 * (len(texts) - len(held_out))


def test_spawned_workers_give_the_same_batches(tmp_path, tokenizer):
    """Workers started by spawn (macOS's default; forkserver, Python 3.14's on Linux, pickles alike) receive the
    pipeline pickled: tokenizer settings and the hold-out filter included, they deliver what the main process does."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.split_special_tokens = True  # a setting the Rust tokenizer's own pickle drops
    texts = [f"<|im_start|>document {i}<|im_end|> " + "word " * (i % 13) for i in range(120)]
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    train = build_datasets(data_args(train_file=path, validation_documents=5, block_size=16), tokenizer).train
    train.passes = 1  # endless otherwise

    def batches(**kwargs):
        return [batch["input_ids"] for batch in StatefulDataLoader(train, batch_size=4, **kwargs)]

    expected = batches(num_workers=0)
    assert len(expected) > 10 and 1 not in torch.cat(expected).tolist()  # <|im_start|> split into plain tokens
    spawned = batches(num_workers=1, multiprocessing_context="spawn")
    assert len(spawned) == len(expected) and all(torch.equal(a, b) for a, b in zip(spawned, expected))


def test_resume_after_the_hold_out(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [("text number %d " % i) * 20 for i in range(80)])

    def train():
        dataset = build_datasets(data_args(train_file=path, validation_documents=7, block_size=32), tokenizer).train
        dataset.passes = 1  # endless otherwise
        return dataset

    full = [b["input_ids"].tolist() for b in train()]
    first = train()
    head = [b["input_ids"].tolist() for b in itertools.islice(first, 11)]
    state = copy.deepcopy(first.state_dict())
    resumed = train()
    resumed.load_state_dict(state)
    assert head + [b["input_ids"].tolist() for b in resumed] == full


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_in_a_later_pass_continues_exactly(tmp_path, tokenizer, num_workers):
    """A corpus read several times, endlessly as in training: each pass starts at its first document with no
    leftover, and a state saved in any pass (a DataLoader reads ahead before it is saved) resumes in that pass, at
    that position."""
    files = [write_jsonl(tmp_path / f"part{k}.jsonl", [f"file {k} document {i} " * (2 + 3 * i) for i in range(3)])
             for k in range(2)]

    def loader():
        return StatefulDataLoader(packed(files, tokenizer, 16, passes=None, streams=max(1, num_workers),
                                         blocks_per_batch=2), batch_size=2, num_workers=num_workers,
                                  collate_fn=collate_blocks)

    full = list(batches_and_passes(loader(), 40))
    assert [data_pass for _, data_pass in full] == sorted(data_pass for _, data_pass in full)
    assert full[-1][1] >= 5
    per_pass = [[ids for ids, data_pass in full if data_pass == p] for p in (1, 3)]
    assert all(torch.equal(a, b) for a, b in zip(*per_pass)) and per_pass[1]  # the same blocks in every pass
    for cut in (1, 17, 33):
        head, second, _ = cut_and_resume(loader, cut)
        rest = [batch["input_ids"] for batch in itertools.islice(second, 40 - cut)]
        assert all(torch.equal(a, b) for a, (b, _) in zip(head + rest, full, strict=True)), cut


def test_the_training_stream_goes_on_pass_after_pass(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [f"document {i} " * 10 for i in range(6)])
    train = build_datasets(data_args(train_file=path, block_size=16), tokenizer).train
    blocks = list(itertools.islice(train, 200))
    assert len(blocks) == 200 and data_pass(stream_states(train.state_dict())) > 5
    too_little = write_jsonl(tmp_path / "short.jsonl", ["one", "two"])
    train = build_datasets(data_args(train_file=too_little, block_size=64), tokenizer).train
    with pytest.raises(DataError, match=r"a whole pass over the training data \(2 documents\) holds fewer than "
                                        r"block_size=64 tokens"):
        next(iter(train))


def test_a_long_document_packs_in_linear_time():
    """Leftover tokens are an array and an offset: a document of n tokens costs O(n), not O(n^2 / block_size). The
    work is counted, not timed: every block of the document is a view of one array of its tokens, joined once, and
    the packer's position after each block holds that same array (the leftover is cut only when a state is saved)."""
    length, block_size = 100_000, 16
    documents = Dataset.from_dict({"input_ids": [list(range(length))]}).to_iterable_dataset()
    stream = BlockStream(TokenShareMixer([SourceReader(documents, 0, NO_SHUFFLE, np.int64)], [[1.0]]), block_size,
                         passes=1)
    blocks, held = [], set()
    for block in stream:
        blocks.append(block)
        held.add(id(stream.position.tokens))
    assert len(blocks) == length // block_size and blocks[-1]["input_ids"].tolist() == list(range(99_984, 100_000))
    storages = {block["input_ids"].untyped_storage().data_ptr(): block["input_ids"].untyped_storage().nbytes()
                for block in blocks}
    assert sum(storages.values()) == length * 8, storages  # the tokens materialised once, as int64
    assert len(held) == 1  # no per-block copy of the position either


def test_a_bad_record_past_the_checked_ones_is_named_when_training_reaches_it(tmp_path, tokenizer):
    """Start-up checks the first CHECKED_RECORDS records only (every rank runs it); a bad line further on stops
    training with its file and line: here past the reader's first 10 MB chunk, and in a small file that the reader
    parses whole at start-up."""
    lines = [json.dumps({"text": f"document {i} " + "word " * 2000}) for i in range(CHECKED_RECORDS + 200)]
    lines[CHECKED_RECORDS + 150] = '{"text": '
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 10 * 2**20
    train = build_datasets(data_args(train_file=str(path), block_size=4096), tokenizer).train  # start-up passes
    with pytest.raises(DataError, match=rf"invalid JSON in .*big\.jsonl at line {CHECKED_RECORDS + 151}"):
        for _ in train:
            pass
    path.write_text("\n".join(line[:100] + '"}' if line.startswith('{"text": "') else line for line in lines))
    with pytest.raises(DataError, match=rf"invalid JSON in .*big\.jsonl at line {CHECKED_RECORDS + 151}"):
        build_datasets(data_args(train_file=str(path), block_size=16), tokenizer)


@pytest.mark.parametrize("value, kind", [(None, "null"), (7, "a number"), (["a"], "a list")])
@pytest.mark.parametrize("line", [8, CHECKED_RECORDS + 501])
def test_a_text_that_is_no_string_is_named_with_its_file_and_line(tmp_path, tokenizer, value, kind, line):
    """A null, number or list where the text belongs: at start-up when it is among the checked records, else when
    training reaches it (here with 2 DataLoader workers, as on CUDA), named with its file and line either way."""
    lines = [json.dumps({"text": f"document {i} " + "word " * 20}) for i in range(CHECKED_RECORDS + 600)]
    lines[line - 1] = json.dumps({"text": value})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = rf"bad\.jsonl line {line}: the text column 'text' holds {kind}, not a string"
    if line <= CHECKED_RECORDS:
        with pytest.raises(DataError, match=message):
            build_datasets(data_args(train_file=str(path)), tokenizer)
        return
    train = build_datasets(data_args(train_file=str(path), shuffle_buffer=100), tokenizer, streams=2,
                           blocks_per_batch=2).train  # start-up passes
    with pytest.raises(DataError, match=message):
        for _ in StatefulDataLoader(train, batch_size=2, num_workers=2):
            pass


def test_a_parquet_null_text_is_named_with_its_row_group(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"document {i}" for i in range(100)]
    texts[73] = None
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet", row_group_size=30)
    with pytest.raises(DataError, match=r"a\.parquet row group 2: the text column 'text' holds 1 null\(s\)"):
        build_datasets(data_args(train_file=str(tmp_path / "a.parquet")), tokenizer)
    pq.write_table(pa.table({"text": texts}), tmp_path / "b.parquet", row_group_size=30, write_statistics=False)
    train = build_datasets(data_args(train_file=str(tmp_path / "b.parquet"), block_size=16), tokenizer).train
    with pytest.raises(DataError, match=r"b\.parquet row group 2 row 13: the text column 'text' holds null"):
        list(itertools.islice(train, 1000))
    pq.write_table(pa.table({"text": list(range(10))}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet: the text column 'text' holds int64 values, not strings"):
        build_datasets(data_args(train_file=str(tmp_path / "c.parquet")), tokenizer)


def test_workers_in_different_passes_resume_exactly(tmp_path, tokenizer):
    """Two workers whose files differ in size are in different passes most of the time. datasets shares the epoch
    between workers, so each must set its own (a copy of the stream): else a resume, where both start at once, would
    put one of them in the other's pass."""
    write_jsonl(tmp_path / "part0.jsonl", [f"long document {i} " * (3 + 4 * i) for i in range(4)])
    write_jsonl(tmp_path / "part1.jsonl", ["a short one"] * 3)

    def loader():
        train = build_datasets(data_args(train_file=str(tmp_path / "part*.jsonl"), block_size=8), tokenizer, streams=2,
                               blocks_per_batch=2).train
        return StatefulDataLoader(train, batch_size=2, num_workers=2, collate_fn=collate_blocks)

    full = list(batches_and_passes(loader(), 40))
    cut = 21
    assert full[cut][1] != full[cut + 1][1], "the two workers should be in different passes at the cut"
    head, second, _ = cut_and_resume(loader, cut, read_ahead=False)
    rest = [batch["input_ids"] for batch in itertools.islice(second, 40 - cut)]
    assert all(torch.equal(a, b) for a, (b, _) in zip(head + rest, full, strict=True))


def test_two_ranks_read_whole_shards_of_three(tmp_path, tokenizer):
    """Three files for two ranks: rank 0 reads two whole files and rank 1 one (split_dataset_by_node would otherwise
    make both read all three and keep every other document): no document read twice, none lost."""
    texts = [f"document {i} is unique" for i in range(90)]
    for k in range(3):
        write_jsonl(tmp_path / f"part{k}.jsonl", texts[k::3])

    def documents(rank):
        data = build_datasets(data_args(train_file=str(tmp_path / "part*.jsonl"), block_size=16), tokenizer, rank, 2)
        assert data.split_description == "3 shards split between 2 ranks"
        return [tokenizer.decode(doc[:-1]) for doc in documents_read(data.train)[0]]

    rank0, rank1 = documents(0), documents(1)
    assert sorted(rank0 + rank1) == sorted(texts) and len(rank0) == 60 and len(rank1) == 30

    def rank0_blocks(state=None, count=None):
        train = build_datasets(data_args(train_file=str(tmp_path / "part*.jsonl"), block_size=16), tokenizer, 0, 2).train
        train.passes = 1  # endless otherwise
        if state is not None:
            train.load_state_dict(state)
        blocks = [block["input_ids"].tolist() for block in itertools.islice(train, count)]
        return blocks, saved_and_loaded(train.state_dict())

    full, _ = rank0_blocks()
    head, state = rank0_blocks(count=len(full) // 2 + 1)  # inside the second of its two files
    assert head + rank0_blocks(state)[0] == full


@pytest.mark.parametrize("layout", ["one file", "two files"])
def test_each_rank_reads_its_own_documents_and_together_all(tmp_path, tokenizer, layout):
    texts = [f"document {i} is unique" for i in range(101)]
    if layout == "one file":  # one shard: split document by document
        pattern = write_jsonl(tmp_path / "one.jsonl", texts)
    else:  # two shards: split file by file
        for k in range(2):
            write_jsonl(tmp_path / f"part{k}.jsonl", texts[k::2])
        pattern = str(tmp_path / "part*.jsonl")

    def documents(rank, world):
        train = build_datasets(data_args(train_file=pattern, validation_documents=10, block_size=16), tokenizer,
                               rank, world).train
        return [tuple(doc) for doc in documents_read(train)[0]]

    rank0, rank1, single = documents(0, 2), documents(1, 2), documents(0, 1)
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(single) and len(single) == len(texts) - 10  # held out: never trained on


def test_flattened_blocks_are_data_collator_with_flattenings_layout_with_the_flash_kwargs():
    """Document masking under flash attention: the blocks of a batch as one row, with the documents' boundaries as
    flash attention's kwargs, exactly what transformers' DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    makes of the same documents; all computed on the host, in the collator."""
    from transformers import DataCollatorWithFlattening

    documents = [[11, 12, 13], [21, 22, 23, 24, 25], [31, 32], [41, 42, 43, 44], [51, 52]]
    blocks = [documents[:2], documents[2:]]  # two blocks of 8 tokens, as the packer cuts them with document masking
    samples = []
    for block in blocks:
        input_ids = torch.tensor([token for document in block for token in document])
        position_ids = torch.cat([torch.arange(len(document)) for document in block])
        samples.append({"input_ids": input_ids, "labels": input_ids.masked_fill(position_ids == 0, -100),
                        "position_ids": position_ids})
    row = collate_blocks(samples, flatten=True)
    reference = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": d} for d in documents])
    assert set(row) == set(reference)
    for key, expected in reference.items():
        if torch.is_tensor(expected):
            assert row[key].dtype == expected.dtype and torch.equal(row[key], expected), key
        else:
            assert row[key] == expected and type(row[key]) is int, key  # a Python int: no tensor to read back
    assert row["cu_seq_lens_q"].tolist() == [0, 3, 8, 10, 14, 16] and row["max_length_q"] == 5
