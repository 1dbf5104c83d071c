"""Data mixtures (`--dataset_mixture`), in process: token shares that follow the weights, exact resume with
`tokens_by_source`, parsing and bad input, a config file's forms, each rank's part of each source; and
`--document_masking`'s blocks and loss."""

import itertools
import json

import pytest
import torch
import yaml
from torchdata.stateful_dataloader import StatefulDataLoader

from helpers import (batches_and_passes, cut_and_resume, data_args, documents_read, fails_in_one_line, mixture,
                     saved_and_loaded, tiny_args, without_train_file, write_jsonl, write_sources)
from pretraining.arguments import parse_args
from pretraining.data import (build_datasets, collate_blocks, data_pass, source_token_counts, stage_token_counts,
                              stream_states)
from pretraining.run_state import RunState
from pretraining.data.mixture import parse_mixture
from pretraining.devices import DeviceReport
from pretraining.errors import DataError


def test_token_shares_follow_the_weights(tmp_path, tokenizer):
    """Documents of the same lengths in both sources: over 300 blocks the token shares are within 3 points of
    0.8/0.2, and the packer's counts add up to every token of every block."""
    lengths = [4 + i % 23 for i in range(600)]
    a, b = write_sources(tmp_path, [f"alpha {i} " + "word " * n for i, n in enumerate(lengths)],
                         [f"beta {i} " + "word " * n for i, n in enumerate(lengths)])
    train = build_datasets(data_args(dataset_mixture=mixture(a, b), block_size=64), tokenizer).train
    blocks = list(itertools.islice(train, 300))
    counts = source_token_counts(stream_states(train.state_dict()), 2)
    assert len(blocks) == 300 and sum(counts) == 300 * 64 and data_pass(stream_states(train.state_dict())) == 1
    shares = [count / sum(counts) for count in counts]
    print(f"token shares over 300 blocks of 64 tokens: {shares}")
    assert shares == pytest.approx([0.8, 0.2], abs=0.03)


@pytest.mark.parametrize("shuffle_buffer", [0, 100])
def test_weights_are_token_shares_whatever_the_document_lengths(tmp_path, tokenizer, shuffle_buffer):
    """0.8 of short documents (about 10 tokens) and 0.2 of long ones (about 200): the tokens, not the documents,
    follow the weights, within 3 points after 300 blocks (a per-document draw gave the short source about 0.04)."""
    a, b = write_sources(tmp_path, [f"alpha {i} " + "word " * (4 + i % 9) for i in range(3000)],
                         [f"beta {i} " + "word " * (150 + i % 101) for i in range(200)])
    train = build_datasets(data_args(dataset_mixture=mixture(a, b), block_size=64, shuffle_buffer=shuffle_buffer),
                           tokenizer).train
    list(itertools.islice(train, 300))
    counts = source_token_counts(stream_states(train.state_dict()), 2)
    shares = [count / sum(counts) for count in counts]
    print(f"token shares over 300 blocks of 64 tokens, short 0.8 / long 0.2: {shares}")
    assert shares == pytest.approx([0.8, 0.2], abs=0.03)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_stages_switch_the_mixture_at_their_step_and_resume_exactly(tmp_path, tokenizer, num_workers):
    """Stage 1 is source A alone, stage 2 (after 5 steps of 2 batches of 2 blocks: from loader batch 10) B alone: the
    blocks of steps 1-5 hold A's tokens only, those of the steps after B's (but for the end of the last A document,
    carried over), each stage's tokens counted apart; a state saved in either stage, or at the boundary, resumes
    exactly."""
    a, b = write_sources(tmp_path, [f"alpha {i} " + "word " * (3 + i % 5) for i in range(400)],
                         [f"beta {i} " + "word " * (3 + i % 7) for i in range(400)])
    stages = [{"start_step": 0, "dataset_mixture": {a: 1}}, {"start_step": 5, "dataset_mixture": {f"{b}@content": 1}}]
    args = data_args(data_stages=json.dumps(stages), block_size=16)
    block, batch, steps_per_batch = 16, 2, 2  # tokens, blocks per batch, batches per step

    def loader():
        train = build_datasets(args, tokenizer, blocks_per_batch=batch, stage_batches=[0, 5 * steps_per_batch],
                               streams=max(1, num_workers)).train
        return StatefulDataLoader(train, batch_size=batch, num_workers=num_workers, collate_fn=collate_blocks)

    full, stage_counts = [], []
    for batch_ids in (iterator := loader()):
        full.append(batch_ids["input_ids"])
        stage_counts.append(stage_token_counts(stream_states(iterator.state_dict()), 2, 2))
        if len(full) == 8 * steps_per_batch:
            break
    per_step = block * batch * steps_per_batch
    assert stage_counts[5 * steps_per_batch - 1] == [[5 * per_step, 0], [0, 0]]  # 5 steps of A alone
    a_tail, b_part = stage_counts[-1][1]
    assert a_tail + b_part == 3 * per_step and a_tail < block  # then B (after the last A document's end)
    for cut in (3, 5 * steps_per_batch, 13):
        head, second, _ = cut_and_resume(loader, cut)
        rest = [batch_ids["input_ids"] for batch_ids in itertools.islice(second, len(full) - cut)]
        assert all(torch.equal(x, y) for x, y in zip(head + rest, full, strict=True)), cut


def test_a_stage_given_as_a_step_stays_at_that_step_when_the_batch_changes(tmp_path, tokenizer):
    """Stage 2 (B alone) from step 5. Steps 1-3 take 2 loader batches of 2 blocks each; the run resumes after step 3
    with gradient accumulation 1 (--allow_changes batch): its run state puts stage 2 at loader batch 6 + 2 x 1 = 8, so
    steps 4-5 are still A's and the stage's tokens start counting at step 6, as without the change. (Counting the
    stream's blocks with the new batch layout, 12 blocks / 2 per step, would have switched after step 3.)"""
    a, b = write_sources(tmp_path, [f"alpha {i} " + "word " * (3 + i % 5) for i in range(400)],
                         [f"beta {i} " + "word " * (3 + i % 7) for i in range(400)])
    stages = [{"start_step": 0, "dataset_mixture": {a: 1}}, {"start_step": 5, "dataset_mixture": {f"{b}@content": 1}}]
    args = data_args(data_stages=json.dumps(stages), block_size=16)
    run = RunState.start({"batch": {"gradient_accumulation_steps": 2}}, streams=1, batches_per_step=2)

    def loader(state=None):
        train = build_datasets(args, tokenizer, blocks_per_batch=2,
                               stage_batches=[run.batch_of_step(stage["start_step"]) for stage in stages]).train
        if state is not None:
            train.resume_streams(stream_states(state))
        return StatefulDataLoader(train, batch_size=2, collate_fn=collate_blocks)

    first = loader()
    for _ in itertools.islice(first, 3 * 2):  # steps 1-3
        pass
    state = saved_and_loaded(first.state_dict())
    run.checkpoint = "checkpoint-3"
    assert run.resume({"batch": {"gradient_accumulation_steps": 1}}, {"batch"}, 3, batches_per_step=1) == ["batch"]
    assert [run.batch_of_step(stage["start_step"]) for stage in stages] == [0, 8]
    second, block, counts = loader(state), 16, []
    for _ in itertools.islice(second, 5):  # steps 4-8, a batch of 2 blocks each
        counts.append(stage_token_counts(stream_states(second.state_dict()), 2, 2))
    assert counts[1] == [[(3 * 4 + 2 * 2) * block, 0], [0, 0]]  # steps 1-5: stage 1, A alone
    a_tail, b_part = counts[-1][1]
    assert a_tail + b_part == 3 * 2 * block and a_tail < block  # steps 6-8: stage 2, B after the last A document


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_mixture_resumes_exactly_in_any_pass_with_its_token_counts(tmp_path, tokenizer, num_workers):
    """Source B holds a few short documents: it runs out and starts again many times while A goes on (the weights
    hold), and the whole mixture is read several times. A state saved anywhere (a DataLoader reads ahead before it
    is saved) resumes with the same blocks and the same tokens_by_source."""
    a, b = write_sources(tmp_path, [f"alpha document {i} " * (2 + i) for i in range(8)],
                         [f"beta {i}" for i in range(4)])
    args = data_args(dataset_mixture=mixture(a, b, (0.5, 0.5)), block_size=16)

    def loader():
        train = build_datasets(args, tokenizer, streams=max(1, num_workers), blocks_per_batch=2).train
        return StatefulDataLoader(train, batch_size=2, num_workers=num_workers, collate_fn=collate_blocks)

    full, counts = [], []
    for batch in batches_and_passes(iterator := loader(), 40):
        full.append(batch)
        counts.append(source_token_counts(stream_states(iterator.state_dict()), 2))
    assert full[-1][1] >= 3, "the mixture should be read several times"
    assert [sum(c) for c in counts] == [2 * 16 * (i + 1) for i in range(40)]
    for cut in (3, 25):
        head, second, state = cut_and_resume(loader, cut)
        assert source_token_counts(stream_states(state), 2) == counts[cut - 1]
        rest, iterator = [], iter(second)
        for batch in itertools.islice(iterator, 40 - cut):
            rest.append(batch["input_ids"])
        assert all(torch.equal(x, y) for x, (y, _) in zip(head + rest, full, strict=True)), cut
        assert source_token_counts(stream_states(second.state_dict()), 2) == counts[-1]


@pytest.mark.parametrize("entries, expected", [
    (["a.jsonl=0.5", "b.jsonl=-1"], r"the weight of 'b\.jsonl' must be a positive number, got '-1'"),
    (["a.jsonl=0.5", "b.jsonl=0"], r"the weight of 'b\.jsonl' must be a positive number, got 0"),
    (["a.jsonl=half"], r"the weight of 'a\.jsonl' must be a positive number, got 'half'"),
    (["a.jsonl=nan"], r"the weight of 'a\.jsonl' must be a positive number, got 'nan'"),
    (["a.jsonl=0", "b.jsonl=0.0"], r"all weights are zero"),
    (["a.jsonl"], r"entry 'a\.jsonl' is not SOURCE=WEIGHT"),
    (["a.jsonl=1", "a.jsonl=2"], r"names 'a\.jsonl' twice"),
])
def test_bad_mixture_entries(entries, expected):
    with pytest.raises(DataError, match=expected):
        parse_mixture(entries, "text")


def test_mixture_entries_are_parsed_and_normalized():
    hub, local = parse_mixture(["HuggingFaceTB/smollm-corpus:fineweb-edu-dedup=3", "data/code/*.parquet@content=1"],
                               "text")
    assert (hub.dataset_name, hub.dataset_config_name, hub.files, hub.text_column, hub.weight) == (
        "HuggingFaceTB/smollm-corpus", "fineweb-edu-dedup", [], "text", 0.75)
    assert (local.name, local.dataset_name, local.text_column, local.weight) == (
        "data/code/*.parquet@content", None, "content", 0.25)


BAD_MIXTURES = {
    "unknown source": (lambda t, a: [str(t / "nope.jsonl=0.5"), f"{a}=0.5"],
                       r"dataset_mixture source '.*nope\.jsonl': data file not found"),
    "non-positive weight": (lambda t, a: [f"{a}=0.5", f"{a}@text=-0.5"], r"the weight of '.*@text' must be a positive"),
    "non-numeric weight": (lambda t, a: [f"{a}=lots"], r"the weight of '.*\.jsonl' must be a positive number, got 'lots'"),
    "no text column": (lambda t, a: [f"{a}=0.5", f"{a}@code=0.5"],
                       r"dataset_mixture source '.*\.jsonl@code': text column 'code' not found in .*\.jsonl line 1"),
    "all weights zero": (lambda t, a: [f"{a}=0", f"{a}@text=0"], r"dataset_mixture: all weights are zero"),
    "all held out": (lambda t, a: [f"{a}=0.5", write_jsonl(t / "few.jsonl", [f"doc {i}" for i in range(20)]) + "=0.5"],
                     r"source '.*few\.jsonl': no documents left to train on after holding out the first 20"),
}


@pytest.mark.parametrize("case", list(BAD_MIXTURES))
def test_a_bad_mixture_fails_in_one_line_and_changes_nothing(case, tmp_path, corpus, existing_output, capsys):
    entries, pattern = BAD_MIXTURES[case]
    argv = without_train_file(tiny_args(existing_output, None)) + ["--dataset_mixture", *entries(tmp_path, corpus[0])]
    fails_in_one_line(argv, pattern, existing_output, capsys)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_document_masking_gives_each_document_its_own_loss(tmp_path, tokenizer, attn):
    """A packed block with document masking has the loss of its documents run one by one (token-weighted): position
    ids restart after every EOS, attention stays inside each document, and no document's first token is predicted
    from the one before."""
    from configuration_smollm2 import SmolLM2Config
    from modeling_smollm2 import SmolLM2ForCausalLM

    path = write_jsonl(tmp_path / "a.jsonl", [f"Document {i}: " + "some words " * (i % 7) for i in range(40)])
    data = build_datasets(data_args(train_file=path, block_size=64, document_masking=True, validation_documents=10),
                          tokenizer)
    train, evaluation = data.train, data.evaluation
    block = next(iter(train))
    ids, positions, labels = block["input_ids"], block["position_ids"], block["labels"]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) > 3 and all(ids[start - 1] == tokenizer.eos_token_id for start in starts[1:])
    assert labels[starts].eq(-100).all() and (labels != -100).sum() == 64 - len(starts)
    assert evaluation[0]["position_ids"][0] == 0 and "position_ids" in evaluation.column_names

    torch.manual_seed(0)
    config = SmolLM2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = attn
    model = SmolLM2ForCausalLM(config).eval()
    with torch.no_grad():
        packed = model(input_ids=ids[None], position_ids=positions[None], labels=labels[None], use_cache=False).loss
        total = 0.0
        for start, end in zip(starts, starts[1:] + [64]):
            document = ids[None, start:end]
            if end - start > 1:
                total += model(input_ids=document, labels=document, use_cache=False).loss * (end - start - 1)
        unmasked = model(input_ids=ids[None], labels=labels[None], use_cache=False).loss
    assert packed.item() == pytest.approx(total.item() / (64 - len(starts)), abs=1e-5)
    assert abs(unmasked.item() - packed.item()) > 1e-3  # the mask is what made them equal

    # flash attention's layout (collate_blocks(flatten=True)): three blocks as one row have the stacked blocks' loss
    blocks = list(itertools.islice(train, 3))
    stacked, row = collate_blocks([dict(b) for b in blocks]), collate_blocks(blocks, flatten=True)
    assert row["input_ids"].shape == row["position_ids"].shape == row["labels"].shape == (1, 3 * 64)
    inputs = ("input_ids", "position_ids", "labels")
    with torch.no_grad():
        by_row = model(**{key: row[key] for key in inputs}, use_cache=False).loss
        by_block = model(**{key: stacked[key] for key in inputs}, use_cache=False).loss
    assert by_row.item() == pytest.approx(by_block.item(), abs=1e-5)


@pytest.mark.parametrize("form", ["list", "mapping"])
def test_a_config_file_takes_the_mixture_as_a_list_or_a_mapping(tmp_path, form):
    entries = {"HuggingFaceTB/smollm-corpus:cosmopedia-v2": 0.6, "data/code/*.parquet@content": 0.4}
    value = [f"{name}={weight}" for name, weight in entries.items()] if form == "list" else entries
    path = tmp_path / "mixture.yaml"
    path.write_text(yaml.safe_dump({"dataset_mixture": value, "max_steps": 3}))
    _, data, _ = parse_args([str(path)], DeviceReport("cpu"))
    assert data.dataset_mixture == ["HuggingFaceTB/smollm-corpus:cosmopedia-v2=0.6", "data/code/*.parquet@content=0.4"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_three_ranks_read_each_source_its_own_way(tmp_path, tokenizer, num_workers):
    """Source A in four files, B in two, for three ranks: each rank reads whole files of A (two, one, one) and all of
    B, keeping the B documents whose digest falls to it. Rank 0's DataLoader workers then split B between them,
    the other ranks' one worker reads it all: still no document read twice, none lost, and an exact resume."""
    texts_a, texts_b = [f"alpha {i} is unique" for i in range(40)], [f"beta {i} too" for i in range(30)]
    a, b = write_sources(tmp_path, texts_a, texts_b, shards=2)
    for k in range(4):
        write_jsonl(tmp_path / f"a{k}.jsonl", texts_a[k::4])
    args = data_args(dataset_mixture=mixture(a, b, (0.5, 0.5)), block_size=16, validation_documents=0)

    def documents(rank):
        """Every document this rank reads in one pass, as text, by source."""
        data = build_datasets(args, tokenizer, rank, 3, streams=max(1, num_workers), blocks_per_batch=2)
        train = data.train
        assert data.split_description == (f"{a}: 4 shards split between 3 ranks; {b}@content: 2 shard(s) for 3 ranks: every "
                                 "rank reads all, keeps the documents whose digest falls to it")
        return [[tokenizer.decode(doc[:-1]) for doc in source]
                for source in documents_read(train)]

    by_rank = [documents(rank) for rank in range(3)]
    for source, texts in enumerate((texts_a, texts_b)):
        kept = [set(read[source]) for read in by_rank]
        assert set().union(*kept) == set(texts) and sum(map(len, kept)) == len(texts), source  # each once, none lost
        assert all(kept), f"a rank kept nothing of source {source}"
    assert [len(set(read[0])) for read in by_rank] == [20, 10, 10]

    def loader():
        train = build_datasets(args, tokenizer, 0, 3, streams=max(1, num_workers), blocks_per_batch=2).train
        return StatefulDataLoader(train, batch_size=2, num_workers=num_workers, collate_fn=collate_blocks)

    full = [batch["input_ids"] for batch in itertools.islice(loader(), 30)]
    head, second, _ = cut_and_resume(loader, 11, read_ahead=False)
    rest = list(itertools.islice((batch["input_ids"] for batch in second), 30 - 11))
    assert all(torch.equal(x, y) for x, y in zip(head + rest, full, strict=True))


def test_a_rank_with_no_documents_is_refused_in_one_line(tmp_path, tokenizer):
    """One document for two ranks, in a mixture and alone: the rank it does not fall to would have an empty source
    to sample from, or no data while the other rank waits for it."""
    a, b = write_sources(tmp_path, [f"alpha {i}" for i in range(10)], ["the only beta document"], shards=1)
    single = write_jsonl(tmp_path / "single.jsonl", ["the only document"])
    for args, what, reading in [
        (data_args(dataset_mixture=mixture(a, b), block_size=16, validation_documents=0),
         f"dataset_mixture source '{b}@content'", "every rank reads all, keeps the documents whose digest falls to it"),
        (data_args(train_file=single, block_size=16, validation_documents=0), "the training data",
         "every rank reads all, keeps the documents whose digest falls to it"),
    ]:
        errors = []
        for rank in range(2):
            try:
                build_datasets(args, tokenizer, rank, 2)
            except DataError as err:
                errors.append(str(err))
        assert len(errors) == 1, errors  # the document falls to exactly one rank
        assert errors[0].startswith(f"{what}: rank ") and errors[0].endswith(
            f" of 2 gets none of its documents (1 shard(s) for 2 ranks: {reading}): use more data or fewer ranks")
