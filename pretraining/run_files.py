"""The name of every file a run writes into its `output_dir`, in one place: the writers and readers import them.

    output_dir/
        training_log.jsonl      TRAINING_LOG     one row per training log and per evaluation
        samples.jsonl           SAMPLES_LOG      the generation samples
        training_curves.png     CURVES_PNG       the curves of the log
        README.md               MODEL_CARD       the model card
        checkpoint-N/           (the Trainer's)  each with
            run_state_rank{R}.pt    run_state_file(R)    rank R's run state: counters, logging window, data position
            run_identity.json       RUN_IDENTITY         the run's identity as of this checkpoint
            checkpoint_manifest.json  MANIFEST   written last: the checkpoint is complete
        export-llama/, model-f16.gguf   RUN_EXPORTS   --export_formats
        trainer_state.json      TRAINER_STATE    written last by the final save: the run is finished
        run_identity.json       RUN_IDENTITY     what defines the run, its first write: run_state.py
        .run.lock               LOCK             held for the run's life: run_folder.py

The model's own files (config.json, model.safetensors, the tokenizer's, the remote code) are named by transformers.
"""

import os
from contextlib import contextmanager

TRAINING_LOG = "training_log.jsonl"
SAMPLES_LOG = "samples.jsonl"
CURVES_PNG = "training_curves.png"
MODEL_CARD = "README.md"
MANIFEST = "checkpoint_manifest.json"
TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, without importing the Trainer
RUN_IDENTITY = "run_identity.json"
LOCK = ".run.lock"
# what --export_formats writes beside the final model (OUTPUT_DIR/<name>)
RUN_EXPORTS = {"llama": "export-llama", "gguf": "model-f16.gguf"}


def run_state_file(rank: int) -> str:
    """Rank `rank`'s run state in a checkpoint (run_state.py): its counters, logging window and data position."""
    return f"run_state_rank{rank}.pt"


@contextmanager
def written_atomically(path: str):
    """A temporary name beside `path` to write to, swapped in when the block ends: a crash or a failed write (a full
    disk) leaves what `path` held, and no partial copy for the next run to trip on."""
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
