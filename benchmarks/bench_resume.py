"""Cost of resuming the training data stream after N steps: restored state vs re-reading (the Trainer's default).

    python benchmarks/bench_resume.py                       # steps 20, 200, 2000 at 8 x 256 tokens
    python benchmarks/bench_resume.py --steps 20 2000 --block_size 512

For each N the loader is run for N steps and its state saved, as a checkpoint does. Then a fresh loader is
timed to its first batch twice: once restoring that state (this app) and once skipping N batches by
re-reading them (`skip_first_batches`, what the Trainer does without a data state). The first should not grow
with N; the second grows linearly.
"""

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from accelerate.data_loader import prepare_data_loader, skip_first_batches  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from bench_data import ROOT, write_corpus  # noqa: E402
from tempfile import TemporaryDirectory  # noqa: E402
from pretraining.data.pipeline import TokenizedSource, pack_sources  # noqa: E402
from pretraining.data.reading import Shuffle  # noqa: E402
from pretraining.data.sources import load_text_stream  # noqa: E402
from pretraining.data.tokenize import tokenize_stream  # noqa: E402


def loader(tokenizer, files, block_size, batch_size):
    # shuffled as the app reads by default: the restored state holds the shuffle buffer
    dataset = pack_sources([TokenizedSource(tokenize_stream(load_text_stream(files, "text"), tokenizer, "text"))],
                           block_size, Shuffle(buffer=10_000, shards=8, seed=0), tokenizer)
    # the same wrapping as the app's train loader (pretraining/trainer.py)
    return prepare_data_loader(torch.utils.data.DataLoader(dataset, batch_size=batch_size), torch.device("cpu"),
                               num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False,
                               use_stateful_dataloader=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 200, 2000])
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--tokenizer", default=os.path.join(ROOT, "assets", "smollm2_tokenizer"))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokens_needed = (max(args.steps) + 1) * args.block_size * args.batch_size
    with TemporaryDirectory() as folder:
        _, files = write_corpus(folder, copies=tokens_needed // 100_000 + 2)
        print(f"{'steps':>6} {'restore state (s)':>18} {'re-read (s)':>12}")
        for steps in args.steps:
            first = loader(tokenizer, files, args.block_size, args.batch_size)
            iterator = iter(first)
            for _ in range(steps):
                next(iterator)
            state = copy.deepcopy(first.state_dict())  # what a checkpoint at `steps` saves
            expected = next(iterator)["input_ids"]

            start = time.perf_counter()
            resumed = loader(tokenizer, files, args.block_size, args.batch_size)
            resumed.load_state_dict(state)
            batch = next(iter(resumed))
            restore = time.perf_counter() - start
            assert torch.equal(batch["input_ids"], expected), "restored stream is off"

            start = time.perf_counter()
            skipped = skip_first_batches(loader(tokenizer, files, args.block_size, args.batch_size), steps)
            batch = next(iter(skipped))
            reread = time.perf_counter() - start
            assert torch.equal(batch["input_ids"], expected), "re-read stream is off"
            print(f"{steps:>6} {restore:>18.3f} {reread:>12.3f}")


if __name__ == "__main__":
    main()
