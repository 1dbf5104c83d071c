"""The fields of training_log.jsonl's rows: which are printed and plotted, and how an evaluation's are named.

`training_log.jsonl` and TensorBoard carry every field the trainer logs. `LOG_FIELDS` picks the training-row fields
the progress line prints (in this order, with a format) and the curves plot (one panel per distinct `panel`, its
y-axis label, in order of first mention). A new metric is one line here: `derive` computes it from the trainer's
logged values and the training arguments (`PretrainingTrainer.log` calls it), or it is already logged (e.g.
`grad_norm`).

An evaluation is logged under the Trainer's `eval_` prefix (TensorBoard files it under `eval/`); its row in the JSONL
log drops the prefix except from the losses: `eval_loss`, `perplexity`, a mixture's `eval_loss/<source>` and
`perplexity/<source>`, the `--eval_tasks` scores `<task>/<metric>`, `tasks_runtime` and `tokens_seen` (`eval_row`).
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LogField:
    key: str  # the field's name in the log row
    printed: str | None = None  # its format in the progress line; None: not printed
    panel: str | None = None  # the curves panel it is drawn in; None: not plotted
    twin: bool = False  # on the panel's second y axis (another unit than the panel's first field)
    derive: Callable[[dict, object], float] | None = None  # (logs, training_args) -> value, for a derived field


LOG_FIELDS = [
    LogField("loss", "loss {:.4f}", "loss"),
    LogField("learning_rate", "lr {:.3e}", "learning rate"),
    LogField("step_time", "step {:.3f}s"),
    LogField("tokens_per_second", "{:,.0f} tok/s", "tokens/s"),
    # on one device MFU is tokens/s times a constant: its own axis, dashed, shows both lines
    LogField("mfu", "mfu {:.1%}", "tokens/s", twin=True),
    LogField("skipped_steps", "skipped {} non-finite"),
]

# the tokens trained on so far, all ranks: in training rows and (for the scores' axis) in evaluation rows
TOKENS_SEEN = "tokens_seen"
# a mixture's tokens trained on per source: flat `tokens_by_source/<source>` fields in the logs (TensorBoard takes
# scalars only), one mapping `tokens_by_source: {source: tokens}` in the JSONL row
TOKENS_BY_SOURCE = "tokens_by_source"
# with data stages: the stage of the step (1 for the first) and the tokens per source trained on in that stage
DATA_STAGE = "data_stage"
STAGE_TOKENS_BY_SOURCE = "stage_tokens_by_source"

EVAL_PREFIX = "eval_"  # the Trainer's prefix for evaluation metrics
EVAL_LOSS = "eval_loss"
PERPLEXITY = "perplexity"
TASKS_RUNTIME = "tasks_runtime"  # seconds the --eval_tasks took at an evaluation
# what the Trainer adds to every evaluation's metrics that the JSONL row leaves out
TRAINER_EVAL_SPEED = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def eval_row(logs: dict) -> dict:
    """An evaluation's logged metrics under their JSONL row names (see the module docstring)."""
    return {key if key.startswith(EVAL_LOSS) else key[len(EVAL_PREFIX):]: value for key, value in logs.items()
            if key.startswith(EVAL_PREFIX) and key not in TRAINER_EVAL_SPEED}


def source_loss_keys(rows: list[dict]) -> list[str]:
    """A mixture's per-source eval losses in eval rows (`eval_loss/<source>`), in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row if key.startswith(EVAL_LOSS + "/")))


def score_keys(rows: list[dict]) -> list[str]:
    """The benchmark scores in eval rows (`<task>/<metric>`, written with --eval_tasks), in first-seen order."""
    per_source = (EVAL_LOSS + "/", PERPLEXITY + "/")
    return list(dict.fromkeys(key for row in rows for key in row if "/" in key and not key.startswith(per_source)))
