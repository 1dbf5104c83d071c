"""Documents to token ids with EOS appended, lazily and batched: what the packer concatenates."""

import copy

from datasets import IterableDataset

from pretraining.errors import DataError


class IdsEncoder:
    """Texts to their token ids (no special tokens), as `tokenizer(texts)` gives them.

    For a fast tokenizer it calls the Rust tokenizer's `encode_batch_fast` itself: `tokenizer(texts)` also computes
    character offsets and converts every encoding to Python lists one attribute at a time, a quarter or more of
    the tokenizing time (benchmarks/bench_data.py), for output the pipeline drops. The copy is set up the way
    `tokenizer(texts)` sets the shared one before each call: no truncation or padding, and special-token strings in
    the text split or not as `tokenizer.split_special_tokens` says.
    A class rather than a closure so that DataLoader workers started by spawn or forkserver (the default on macOS
    and, from Python 3.14, on Linux) can unpickle it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = None
        if getattr(tokenizer, "is_fast", False):
            self.backend = copy.deepcopy(tokenizer.backend_tokenizer)
            self.backend.no_truncation()
            self.backend.no_padding()
            self.backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def __getstate__(self):
        # the Rust tokenizer's pickle drops encode_special_tokens: the receiving process sets its copy up again
        return {"tokenizer": self.tokenizer}

    def __setstate__(self, state):
        self.__init__(state["tokenizer"])


def tokenize_batch(batch: dict, encode: IdsEncoder, eos: int, text_column: str) -> dict:
    """Every document's ids with EOS; an empty document is skipped (a lone EOS would teach nothing)."""
    texts = batch[text_column]
    if not all(isinstance(text, str) for text in texts):  # the reader names the file and line (files.bad_record)
        raise TypeError(f"a document's text is not a string: {next(t for t in texts if not isinstance(t, str))!r}")
    return {"input_ids": [doc + [eos] for doc in encode([text for text in texts if text])]}


def tokenize_stream(dataset: IterableDataset, tokenizer, text_column: str) -> IterableDataset:
    """Tokenize lazily (fast tokenizer, batched) and append EOS to every document, so that packed
    neighbours are separated as in the official pretraining data."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token: documents could not be separated")
    dataset = dataset.select_columns([text_column])
    # a module-level function with fn_kwargs, not a closure: spawned DataLoader workers pickle the dataset
    fn_kwargs = {"encode": IdsEncoder(tokenizer), "eos": eos, "text_column": text_column}
    return dataset.map(tokenize_batch, batched=True, batch_size=256, remove_columns=[text_column], fn_kwargs=fn_kwargs)
