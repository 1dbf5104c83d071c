"""Training curves: a run's `training_log.jsonl` drawn as a PNG (`python plot_training_log.py OUTPUT_DIR`).

One panel against the optimizer step per `panel` of `log_fields.LOG_FIELDS` (loss, learning rate, tokens/s with MFU
on a second axis when it was logged), the eval losses as markers on the loss panel (and each source's for a
mixture), and a last panel with the benchmark scores (`<task>/<metric>` in the eval rows, from `--eval_tasks`)
against tokens seen when there are any. Null (non-finite) values show as gaps. The training app draws it at
evaluations, checkpoints and the end of training; `read_training_log` also serves the model card.
"""

import math
import os

from pretraining.jsonl import read_jsonl
from pretraining.log_fields import LOG_FIELDS, TOKENS_SEEN, score_keys, source_loss_keys
from pretraining.run_files import CURVES_PNG, TRAINING_LOG

MARKERS_UP_TO = 20  # with this few points a bare line is hard to see (a single point not at all)


def read_training_log(output_dir: str) -> tuple[list[dict], list[dict]]:
    """(training rows, eval rows) of `output_dir/training_log.jsonl`, each sorted by step with one row per
    step (the last one logged wins). A torn line, as a kill mid-write leaves, is skipped."""
    path = os.path.join(output_dir, TRAINING_LOG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {TRAINING_LOG} in {output_dir}")
    by_type = {"train": {}, "eval": {}}
    for row in read_jsonl(path):
        if row.get("type") in by_type and isinstance(row.get("step"), int):
            by_type[row["type"]][row["step"]] = row
    return tuple([rows[step] for step in sorted(rows)] for rows in by_type.values())


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key`; null becomes NaN, which matplotlib draws as a gap."""
    steps = [row["step"] for row in rows if key in row]
    values = [math.nan if row[key] is None else row[key] for row in rows if key in row]
    return steps, values


def plot_scores(ax, eval_rows: list[dict], keys: list[str]) -> None:
    """Benchmark scores against the tokens seen at each evaluation, as in pretraining reports (against the step for a
    log whose evaluation rows do not count tokens: written before they did)."""
    by_tokens = all(row.get(TOKENS_SEEN) is not None for row in eval_rows)
    for key in keys:
        rows = [row for row in eval_rows if key in row]
        plot_line(ax, [row[TOKENS_SEEN] if by_tokens else row["step"] for row in rows], series(rows, key)[1],
                  label=key)
    ax.set_xlabel("tokens seen" if by_tokens else "step")
    ax.set_ylabel("score")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)


def has_values(values: list[float]) -> bool:
    return any(not math.isnan(value) for value in values)


def plot_line(ax, steps, values, **kwargs):
    marker = "o" if len(steps) <= MARKERS_UP_TO else None
    return ax.plot(steps, values, marker=marker, markersize=3, **kwargs)


def plot_panel(ax, panel: str, train_rows: list[dict]) -> list:
    """The fields of LOG_FIELDS drawn in `panel`, a twin field on a second y axis; returns the lines drawn."""
    lines, twin = [], None
    for field in (field for field in LOG_FIELDS if field.panel == panel):
        steps, values = series(train_rows, field.key)
        if not has_values(values):
            continue
        target = ax
        if field.twin:
            target = twin = twin or ax.twinx()
            twin.set_ylabel(field.key)
        lines += plot_line(target, steps, values, label=field.key, color=f"C{len(lines)}",
                           linestyle="--" if field.twin else "-")
    ax.set_ylabel(panel)
    ax.grid(alpha=0.3)
    return lines


def curves_figure(output_dir: str):
    """The curves of `output_dir/training_log.jsonl` as a matplotlib Figure."""
    # imported here: the training app imports this module, and matplotlib costs a second to import
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train_rows, eval_rows = read_training_log(output_dir)
    panels = list(dict.fromkeys(field.panel for field in LOG_FIELDS if field.panel))
    scores = score_keys(eval_rows)
    # a bare Figure renders with Agg and leaves pyplot's global state and backend alone: no screen needed
    fig = Figure(figsize=(8, 3 * (len(panels) + bool(scores))), layout="constrained")
    axes = fig.subplots(len(panels) + bool(scores), 1, squeeze=False)[:, 0]
    fig.suptitle(os.path.basename(os.path.abspath(output_dir)))
    step_axes = axes[:len(panels)]
    for ax, panel in zip(step_axes, panels):
        lines = plot_panel(ax, panel, train_rows)
        if panel == "loss":
            eval_steps, eval_losses = series(eval_rows, "eval_loss")
            if eval_steps:
                lines += ax.plot(eval_steps, eval_losses, "o", color="tab:orange", label="eval_loss")
            for key in source_loss_keys(eval_rows):
                lines += ax.plot(*series(eval_rows, key), "x--", linewidth=0.8, label=key)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4))
        if lines:
            ax.legend(lines, [line.get_label() for line in lines], loc="best", fontsize="small")
    for ax in step_axes[:-1]:  # the step axis, shown once; the scores panel has its own (tokens)
        ax.sharex(step_axes[-1])
        ax.tick_params(labelbottom=False)
    step_axes[-1].set_xlabel("step")
    step_axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # shared by all panels: no step 2.5
    if scores:
        plot_scores(axes[-1], eval_rows, scores)
    return fig


def plot_training_log(output_dir: str, path: str | None = None) -> str:
    """Write the curves of `output_dir/training_log.jsonl` to `path` (default
    `output_dir/training_curves.png`) and return that path."""
    fig = curves_figure(output_dir)
    path = path or os.path.join(output_dir, CURVES_PNG)
    # written next to the target and swapped in: a viewer never sees a half-written PNG
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path
