"""Write a small offline corpus for the demo and the tests: CPython's bundled documentation.

    python demo_corpus.py demo_data        # -> demo_data/train.jsonl, demo_data/validation.jsonl

`pydoc_data.topics` ships with every CPython (about 0.5 MB of English and code). Each paragraph
becomes a JSON Lines document with a `text` field; every 20th goes to validation.
"""

import json
import os
import sys

from pydoc_data.topics import topics


def documents() -> list[str]:
    return [paragraph.strip() for topic in sorted(topics) for paragraph in topics[topic].split("\n\n")
            if len(paragraph.strip()) > 40]


def write_corpus(folder: str, validation_every: int = 20) -> tuple[str, str]:
    os.makedirs(folder, exist_ok=True)
    train_path, validation_path = os.path.join(folder, "train.jsonl"), os.path.join(folder, "validation.jsonl")
    with open(train_path, "w", encoding="utf-8") as train, open(validation_path, "w", encoding="utf-8") as validation:
        for i, text in enumerate(documents()):
            (validation if i % validation_every == validation_every - 1 else train).write(json.dumps({"text": text}) + "\n")
    return train_path, validation_path


if __name__ == "__main__":
    for path in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "demo_data"):
        print(path)
