"""Batching packed blocks for the Trainer."""

from transformers import default_data_collator
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids


def collate_blocks(samples: list[dict], flatten: bool = False) -> dict:
    """Stacks samples into a batch of tensors.

    `flatten` (document masking under flash attention): the blocks as one row, (1, batch * block_size), as
    transformers' DataCollatorWithFlattening lays them out: flash attention takes the documents from position_ids
    (its variable-length path) only in a batch of one row. Each block starts at position 0 with an ignored label,
    so the row has the same loss as the stacked blocks. The documents' boundaries go with it as flash attention's own
    kwargs (`cu_seq_lens_q/k`, int32, and `max_length_q/k`, Python ints, DataCollatorWithFlattening's
    `return_flash_attn_kwargs`), computed here on the host: left to the model, every layer would derive them from
    position_ids again, reading them back from the GPU."""
    batch = default_data_collator(samples)
    if flatten:
        batch = {key: value.reshape(1, -1) for key, value in batch.items()}  # (batch, block) -> (1, batch * block)
        (cu_seq_lens, _), (max_length, _) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
        batch.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens,
                     max_length_q=int(max_length), max_length_k=int(max_length))
    return batch
