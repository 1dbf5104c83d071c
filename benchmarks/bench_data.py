"""Throughput of the data pipeline (stream -> tokenize with EOS -> pack) against the bare tokenizer.

    python benchmarks/bench_data.py                    # CPython docs x 20, block 2048, workers 0/1/2, 3 rounds
    python benchmarks/bench_data.py --copies 50 --block_size 1024 --rounds 5

The peer is the fast tokenizer alone, batched, on the same documents in memory: the pipeline should deliver
at least 90% of its tokens/s. The pipeline is timed as the app reads by default (shuffled: shards in a seeded order,
8 at a time, through a 10,000-document buffer) and in file order (--shuffle_buffer 0). Two peers are timed: `tokenizer(texts)`, the call users write, and the Rust
`encode_batch_fast` call the pipeline itself makes (pretraining/data/tokenize.py: IdsEncoder); "vs it" against the second is the
pipeline's own overhead (reading, EOS, packing, DataLoader). Every round times the peer right before each worker count, and the ratio reported is
the median of those per-round ratios, so that a shared machine's changing load hits both alike. The corpus is
written as two JSON Lines files so that two DataLoader workers each get a shard.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from pretraining.data.pipeline import single_source_packer  # noqa: E402
from pretraining.data.reading import NO_SHUFFLE, Shuffle  # noqa: E402
from pretraining.data.sources import load_text_stream  # noqa: E402
from pretraining.data.tokenize import IdsEncoder, tokenize_stream  # noqa: E402
from demo_corpus import documents  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(folder: str, copies: int) -> tuple[list[str], list[str]]:
    texts = [f"{i}. {text}" for i in range(copies) for text in documents()]
    files = [os.path.join(folder, f"part{k}.jsonl") for k in range(2)]
    for k, path in enumerate(files):
        with open(path, "w", encoding="utf-8") as f:
            for text in texts[k::2]:
                f.write(json.dumps({"text": text}) + "\n")
    return texts, files


def raw_tokenizer_rate(encode, texts: list[str], batch_size: int = 256) -> float:
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch_size):
        tokens += sum(len(doc) + 1 for doc in encode(texts[i : i + batch_size]))  # + EOS, as the pipeline counts it
    return tokens / (time.perf_counter() - start)


def pipeline_rate(tokenizer, files: list[str], block_size: int, batch_size: int, workers: int,
                  shuffle: Shuffle) -> tuple[float, float]:
    """Tokens/s over the whole pass, from the loader's start (worker start-up included) to its last batch, and the
    seconds until the first batch (worker start-up, and filling the shuffle buffer, paid once per run). The whole
    pass, not the rate after the first batch: a shuffled pass reads ahead into its buffer before its first batch and
    drains it at the end."""
    # one pass: the training stream is endless (passes=None) and this reads to its end
    dataset = single_source_packer(tokenize_stream(load_text_stream(files, "text"), tokenizer, "text"), block_size,
                                   shuffle, tokenizer, passes=1)
    loader = StatefulDataLoader(dataset, batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    batches = iter(loader)
    tokens = next(batches)["input_ids"].numel()
    first_batch = time.perf_counter()
    tokens += sum(batch["input_ids"].numel() for batch in batches)
    return tokens / (time.perf_counter() - start), first_batch - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=20, help="copies of the CPython docs corpus (~110k tokens each)")
    parser.add_argument("--block_size", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median ratio reported)")
    parser.add_argument("--tokenizer", default=os.path.join(ROOT, "assets", "smollm2_tokenizer"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes; keep the peer comparable
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        texts, files = write_corpus(folder, args.copies)
        print(f"corpus: {len(texts):,} documents")
        peers = {  # the call users write, and the Rust call the pipeline makes (IdsEncoder): its own overhead
            "tokenizer()": lambda batch: tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"],
            "Rust encode": IdsEncoder(tokenizer),
        }
        # the app's default shuffling (run_pretrain.py --shuffle_buffer, --shuffle_shards), and the files in order
        orders = {"shuffled": Shuffle(buffer=10_000, shards=8, seed=0), "file order": NO_SHUFFLE}
        # per round: (peer rates..., pipeline rate, first batch seconds)
        rows = {(order, workers): [] for order in orders for workers in (0, 1, 2)}
        for _ in range(args.rounds):
            for (order, workers), row in rows.items():
                raw = [raw_tokenizer_rate(encode, texts) for encode in peers.values()]
                row.append((*raw, *pipeline_rate(tokenizer, files, args.block_size, args.batch_size, workers,
                                                 orders[order])))
        print(f"{'order':>10} {'workers':>8} {'tokens/s':>10} "
              + " ".join(f"{name + ' tok/s':>18} {'vs it':>6}" for name in peers) + f" {'first batch s':>14}")
        for (order, workers), row in rows.items():
            *raw, rate, first_batch = (statistics.median(column) for column in zip(*row))
            ratios = [statistics.median(r[-2] / r[k] for r in row) for k in range(len(peers))]
            columns = " ".join(f"{peer:>18,.0f} {ratio:>6.2f}" for peer, ratio in zip(raw, ratios))
            print(f"{order:>10} {workers:>8} {rate:>10,.0f} {columns} {first_batch:>14.2f}")


if __name__ == "__main__":
    main()
