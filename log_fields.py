"""The fields of the training log rows that are printed and plotted, declared once.

`training_log.jsonl` and TensorBoard carry every field the Trainer logs. This list picks the ones the progress line
prints (in this order, with a format) and the curves plot (one panel per distinct `panel`, its y-axis label, in
order of first mention). A new metric is one line here: `derive` computes it from the Trainer's logged values and
the training arguments (`PretrainingTrainer.log` calls it), or it is already logged (e.g. `grad_norm`).
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
