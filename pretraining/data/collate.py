"""Batching packed blocks for the Trainer."""

from transformers import default_data_collator


def collate_blocks(samples: list[dict], flatten: bool = False) -> dict:
    """Stacks samples into a batch; `data_pass` stays a Python int (the batch's latest pass), so that reading it
    on the host needs no device sync once the batch has moved to the GPU.

    `flatten` (document masking under flash attention): the blocks as one row, (1, batch * block_size), as
    transformers' DataCollatorWithFlattening lays them out: flash attention takes the documents from position_ids
    (its variable-length path) only in a batch of one row. Each block starts at position 0 with an ignored label,
    so the row has the same loss as the stacked blocks."""
    passes = [sample.pop("data_pass") for sample in samples if "data_pass" in sample]
    batch = default_data_collator(samples)
    if flatten:
        batch = {key: value.reshape(1, -1) for key, value in batch.items()}  # (batch, block) -> (1, batch * block)
    if passes:
        batch["data_pass"] = max(passes)
    return batch
