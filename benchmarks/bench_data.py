"""Throughput of the data pipeline (stream -> tokenize with EOS -> pack) against the bare tokenizer, and what the
network path costs: the same parquet shards streamed from a Hub over HTTP against read from local disk.

    python benchmarks/bench_data.py                    # CPython docs x 20, block 2048, workers 0/1/2, 3 rounds
    python benchmarks/bench_data.py --copies 50 --block_size 1024 --rounds 5

The peer is the fast tokenizer alone, batched, on the same documents in memory: the pipeline should deliver
at least 90% of its tokens/s. The pipeline is timed as the app reads by default (shuffled: shards in a seeded order,
8 at a time, through a 10,000-document buffer) and in file order (--shuffle_buffer 0). Two peers are timed: `tokenizer(texts)`, the call users write, and the Rust
`encode_batch_fast` call the pipeline itself makes (pretraining/data/tokenize.py: IdsEncoder); "vs it" against the second is the
pipeline's own overhead (reading, EOS, packing, DataLoader). Every round times the peer right before each worker count, and the ratio reported is
the median of those per-round ratios, so that a shared machine's changing load hits both alike. The corpus is
written as two JSON Lines files so that two DataLoader workers each get a shard.

The "through the local Hub" row: the corpus in HuggingFaceTB/smollm-corpus's layout (cosmopedia-v2's 104 parquet
shards), streamed by `datasets` from the tests' local Hub (tests/local_hub.py: the Hub's HTTP API on loopback)
against the same files read from disk, both through the app's pipeline (shuffled as by default, and in file order), no workers: the cost of HTTP and the Hub
clients per token, without a real network's latency and bandwidth. It is timed in a child process (`--through_hub`):
the server runs in this one, as a Hub would on another machine, and HF_ENDPOINT must be set before the Hub clients
are imported.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from pretraining.data.pipeline import TokenizedSource, pack_sources  # noqa: E402
from pretraining.data.reading import NO_SHUFFLE, Shuffle  # noqa: E402
from pretraining.data.sources import load_text_stream  # noqa: E402
from pretraining.data.tokenize import IdsEncoder, tokenize_stream  # noqa: E402
from demo_corpus import documents  # noqa: E402
from local_hub import CORPUS_REPO, LocalHub, write_smollm_corpus  # noqa: E402

HUB_CONFIG = "cosmopedia-v2"
# the app's default shuffling (run_pretrain.py --shuffle_buffer, --shuffle_shards), and the files in order
ORDERS = {"shuffled": Shuffle(buffer=10_000, shards=8, seed=0), "file order": NO_SHUFFLE}


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
                  shuffle: Shuffle, dataset_name: str | None = None) -> tuple[float, float]:
    """Tokens/s over the whole pass, from the loader's start (worker start-up included) to its last batch, and the
    seconds until the first batch (worker start-up, and filling the shuffle buffer, paid once per run). The whole
    pass, not the rate after the first batch: a shuffled pass reads ahead into its buffer before its first batch and
    drains it at the end. `dataset_name`: stream that Hub dataset's HUB_CONFIG instead of `files`; the time then
    includes loading it (README, listing)."""
    start = time.perf_counter()
    stream = load_text_stream(files, "text", dataset_name=dataset_name, dataset_config_name=HUB_CONFIG)
    # one pass: the training stream is endless (passes=None) and this reads to its end
    dataset = pack_sources([TokenizedSource(tokenize_stream(stream, tokenizer, "text"))], block_size, shuffle,
                           tokenizer, passes=1)
    loader = StatefulDataLoader(dataset, batch_size=batch_size, num_workers=workers)
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
    parser.add_argument("--through_hub", metavar="SHARD_FOLDER", help=argparse.SUPPRESS)  # the child of `hub_row`
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes; keep the peer comparable
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.through_hub:
        return time_through_hub(tokenizer, args.through_hub, args)
    with tempfile.TemporaryDirectory() as folder:
        texts, files = write_corpus(folder, args.copies)
        print(f"corpus: {len(texts):,} documents")
        peers = {  # the call users write, and the Rust call the pipeline makes (IdsEncoder): its own overhead
            "tokenizer()": lambda batch: tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"],
            "Rust encode": IdsEncoder(tokenizer),
        }
        # per round: (peer rates..., pipeline rate, first batch seconds)
        rows = {(order, workers): [] for order in ORDERS for workers in (0, 1, 2)}
        for _ in range(args.rounds):
            for (order, workers), row in rows.items():
                raw = [raw_tokenizer_rate(encode, texts) for encode in peers.values()]
                row.append((*raw, *pipeline_rate(tokenizer, files, args.block_size, args.batch_size, workers,
                                                 ORDERS[order])))
        print(f"{'order':>10} {'workers':>8} {'tokens/s':>10} "
              + " ".join(f"{name + ' tok/s':>18} {'vs it':>6}" for name in peers) + f" {'first batch s':>14}")
        for (order, workers), row in rows.items():
            *raw, rate, first_batch = (statistics.median(column) for column in zip(*row))
            ratios = [statistics.median(r[-2] / r[k] for r in row) for k in range(len(peers))]
            columns = " ".join(f"{peer:>18,.0f} {ratio:>6.2f}" for peer, ratio in zip(raw, ratios))
            print(f"{order:>10} {workers:>8} {rate:>10,.0f} {columns} {first_batch:>14.2f}")
        hub_row(tokenizer, texts, folder, args)


def hub_row(tokenizer, texts: list[str], folder: str, args) -> None:
    """The corpus as HuggingFaceTB/smollm-corpus on a local Hub served from here, timed by a child process."""
    hub = LocalHub(os.path.join(folder, "hub"))
    write_smollm_corpus(hub.repo_folder("dataset", CORPUS_REPO), texts, tokenizer)
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=os.path.join(folder, "hf_home"), HF_HUB_OFFLINE="0",
               HF_DATASETS_OFFLINE="0")
    with hub:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--through_hub",
                        os.path.join(hub.repo_folder("dataset", CORPUS_REPO), HUB_CONFIG), "--rounds", str(args.rounds),
                        "--block_size", str(args.block_size), "--batch_size", str(args.batch_size),
                        "--tokenizer", args.tokenizer], env=env, check=True)
    print(f"  the Hub served {len(hub.requests)} requests, {len(hub.downloads())} of them downloads, in "
          f"{args.rounds} rounds")


def time_through_hub(tokenizer, shard_folder: str, args) -> None:
    """Streamed from the Hub at HF_ENDPOINT against its parquet shards on disk, in the same rounds."""
    shards = sorted(glob.glob(os.path.join(shard_folder, "*.parquet")))
    for order, shuffle in ORDERS.items():
        rounds = []  # per round: (local rate, first batch s, Hub rate, first batch s)
        for _ in range(args.rounds):
            rounds.append((*pipeline_rate(tokenizer, shards, args.block_size, args.batch_size, 0, shuffle),
                           *pipeline_rate(tokenizer, [], args.block_size, args.batch_size, 0, shuffle, CORPUS_REPO)))
        local, local_first, hub, hub_first = (statistics.median(column) for column in zip(*rounds))
        ratio = statistics.median(r[2] / r[0] for r in rounds)
        print(f"through the local Hub ({len(shards)} parquet shards of {HUB_CONFIG}, {order}, 0 workers): "
              f"{hub:,.0f} tokens/s vs {local:,.0f} from the same files on disk: {ratio:.2f}x, "
              f"{1e6 / hub - 1e6 / local:+.2f} us per token; first batch {hub_first:.2f} s vs {local_first:.2f} s")



if __name__ == "__main__":
    main()
