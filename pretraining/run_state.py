"""What a run carries across a restart besides the model, optimizer, scheduler and random state (which the Trainer
saves): one record, `RunState`, and the only code that reads or writes it.

    RunState
      record    RunRecord: the run's identity (what defines it: model shape, tokenizer, data, batch layout,
                schedule) in segments, one more for each resume that took allowed changes, and the number of
                data streams a rank reads (fixed at the run's first start)              -> run_identity.json
      counters  Counters: the tokens trained on (all ranks, since step 0), a mixture's tokens per source (this
                rank's), and the batch layouts: which of a rank's loader batches each step starts at
      window    LogWindow: what the next training row averages over (the steps since the last row)
      data      the rank's data streams' states (None: the data from its start)   } -> run_state_rank{R}.pt

The identity record is the run's first write into its output folder (it marks the folder as the run's) and goes into
every checkpoint with the rest. Counters are accumulated as the run goes, never derived from the step and this
command's settings: a resume with another batch layout (`--allow_changes batch`) must not rewrite the past. Such a
resume is one transition, `RunState.resume`, which rebases what the change invalidates from the resumed step on:

    batch     a new batch layout from the resumed step: later steps' loader batches (and with them the data stages'
              switches) follow it; the tokens seen go on from the checkpoint's count
    data      the data from its start: the streams' states dropped, the loader batches counted from the resumed
              step, a mixture's tokens per source so far kept by source name
    schedule  nothing to rebase: the resumed optimizer and scheduler take this command's settings
              (PretrainingTrainer._load_optimizer_and_scheduler, resume_where_the_checkpoint_stopped); another
              optimizer (--optim) starts without state (`optimizer_changed`: the checkpoint's is the other one's), the
              schedule going on
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

import torch

from pretraining.errors import ArgumentError
from pretraining.optimizers import MUON, muon_settings
from pretraining.run_files import RUN_IDENTITY, run_state_file, written_atomically

# what a resume may change with --allow_changes, and what it means
CHANGEABLE = {
    "data": "the data stream starts afresh on the new data (its position in the old data is not used)",
    "schedule": "the new optimizer settings and learning-rate schedule apply from the resumed step (another optimizer "
                "starts without state)",
    "batch": "the new batch layout applies from the resumed step",
}
# the identity's parts, and the flags (ModelArguments, DataArguments, PretrainingArguments) that make each
DATA_FLAGS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "text_column", "block_size",
              "validation_documents", "dataset_mixture", "data_stages", "document_masking", "shuffle_buffer",
              "shuffle_shards")
SCHEDULE_FLAGS = ("learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "decay_steps",
                  "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "optim_args")
BATCH_FLAGS = ("per_device_train_batch_size", "gradient_accumulation_steps")
# the config's own fields that are no part of the architecture
NOT_ARCHITECTURE = ("use_cache",)


def run_identity(config, tokenizer, model_args, data_args, training_args) -> dict:
    """What defines a run, as JSON values: a resume must find the same (or be allowed the changes)."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    settings = lambda names, args: {name: jsonable(getattr(args, name)) for name in names}  # noqa: E731
    architecture = config.to_dict()  # the fields SmolLM2Config declares: the model's shape (not id2label & co)
    identity = {
        "model": {key: architecture[key] for key in sorted(type(config).__annotations__) if key in architecture
                  and key not in NOT_ARCHITECTURE},
        "tokenizer": {"name": model_args.tokenizer_name, "tokens": len(tokenizer),
                      "vocabulary sha256": hashlib.sha256(vocabulary).hexdigest()},
        "data": {**settings(DATA_FLAGS, data_args), "seed": training_args.seed},
        "schedule": settings(SCHEDULE_FLAGS, training_args),
        "batch": {**settings(BATCH_FLAGS, training_args), "world_size": training_args.world_size},
    }
    if training_args.optim == MUON:  # its settings, defaults included: what trains, however --optim_args spells it
        identity["schedule"]["optim_args"] = asdict(muon_settings(training_args.optim_args))
    return json.loads(json.dumps(identity))  # as the file holds it (tuples as lists, keys as strings)


def jsonable(value):
    value = getattr(value, "value", value)  # enums (lr_scheduler_type, optim)
    return value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)


def changes(old: dict, new: dict) -> dict[str, list[str]]:
    """Per part of the identity, the settings whose values differ: 'name: old -> new'."""
    found = {}
    for part in new:
        before, after = old.get(part, {}), new[part]
        differing = [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
                     if before.get(key) != after.get(key)]
        if differing:
            found[part] = differing
    return found


@dataclass
class Segment:
    """The steps from `from_step` on, trained with `identity`; `changed`: the parts a resume changed there."""

    from_step: int
    identity: dict
    changed: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    """The run's identity file: its segments, oldest first, and the data streams each rank reads."""

    segments: list[Segment]
    data_streams: int

    @property
    def identity(self) -> dict:
        """What the newest segment trains with."""
        return self.segments[-1].identity

    def to_json(self) -> dict:
        return {"segments": [{key: value for key, value in asdict(segment).items() if value or key != "changed"}
                             for segment in self.segments], "data_streams": self.data_streams}

    @classmethod
    def from_json(cls, values: dict) -> "RunRecord":
        return cls([Segment(**segment) for segment in values["segments"]], values["data_streams"])


@dataclass
class BatchLayout:
    """Steps from `from_step` on take `batches_per_step` of a rank's loader batches each (gradient accumulation),
    the first of them loader batch `from_batch` (counted from the start of the data the run trains on)."""

    from_step: int
    from_batch: int
    batches_per_step: int


@dataclass
class Counters:
    """What a run counts as it goes."""

    tokens_seen: int = 0  # trained on since step 0, all ranks (skipped non-finite steps too: their data was read)
    # this rank's tokens per source trained on before the current data (--allow_changes data), by source name
    source_tokens_before: dict[str, int] = field(default_factory=dict)
    # this rank's tokens per source since step 0 as of the last checkpoint, by source name
    source_tokens: dict[str, int] = field(default_factory=dict)
    layouts: list[BatchLayout] = field(default_factory=list)


@dataclass
class LogWindow:
    """What the next training row averages over: the steps since the last one."""

    loss_sum: float = 0.0  # the Trainer's running loss (its `_tr_loss`, copied in when a checkpoint is saved)
    last_logged_step: int = 0  # the Trainer's `_globalstep_last_logged`, likewise
    skipped: int = 0  # non-finite steps skipped
    nonfinite_in_a_row: int = 0  # up to the last step, for --max_nonfinite_steps
    steps: int = 0  # timed steps (throughput.StepMeter)
    seconds: float = 0.0
    data_wait: float = 0.0
    tokens: int = 0  # their tokens, all ranks
    flops: float = 0.0  # their training FLOPs, all ranks


@dataclass
class RunState:
    """Everything a run carries across a restart besides model, optimizer, scheduler and random state."""

    record: RunRecord
    counters: Counters
    window: LogWindow = field(default_factory=LogWindow)
    data: dict[int, dict] | None = None  # the data streams' states to resume from (stream index -> state)
    checkpoint: str | None = None  # where it was loaded from (None: a new run)
    optimizer_changed: bool = False  # resumed with another --optim: the checkpoint's optimizer state is not this one's

    @classmethod
    def start(cls, identity: dict, streams: int, batches_per_step: int) -> "RunState":
        """A new run's state: `streams` data streams per rank, `batches_per_step` loader batches a step."""
        return cls(RunRecord([Segment(0, identity)], streams),
                   Counters(layouts=[BatchLayout(0, 0, batches_per_step)]))

    @classmethod
    def load(cls, checkpoint: str, rank: int) -> "RunState":
        """Rank `rank`'s state as `checkpoint` holds it."""
        record = read_record(checkpoint)
        path = os.path.join(checkpoint, run_state_file(rank))
        if record is None or not os.path.isfile(path):
            missing = RUN_IDENTITY if record is None else run_state_file(rank)
            raise ArgumentError(f"cannot resume from {checkpoint}: it has no {missing} (an earlier version of this "
                                "app wrote it): resume it with that version, or start anew with --replace_output_dir")
        saved = torch.load(path, weights_only=True)
        counters = saved["counters"]
        layouts = [BatchLayout(**layout) for layout in counters.pop("layouts")]
        return cls(record, Counters(**counters, layouts=layouts), LogWindow(**saved["window"]),
                   {int(index): state for index, state in saved["data"].items()}, checkpoint)

    def resume(self, identity: dict, allowed: set[str], step: int, batches_per_step: int) -> list[str]:
        """This command's `identity` against the checkpoint's, at `step`: the transition to the parts that changed and
        are allowed (returned); what is not allowed is refused in one line (`check_resume`)."""
        changed = check_resume(self.record, identity, allowed, self.checkpoint, step)
        if not changed:
            return []
        optim = lambda identity: identity.get("schedule", {}).get("optim")  # noqa: E731
        self.optimizer_changed = optim(self.record.identity) != optim(identity)
        self.record.segments.append(Segment(step, identity, changed))
        if "data" in changed:
            self.data = None
            self.counters.source_tokens_before = dict(self.counters.source_tokens)
            self.counters.layouts = [BatchLayout(step, 0, batches_per_step)]
        elif "batch" in changed:
            self.counters.layouts.append(BatchLayout(step, self.batch_of_step(step), batches_per_step))
        return changed

    def batch_of_step(self, step: int) -> int:
        """The loader batch (of each rank, counted from the start of the data) that the step after `step` steps starts
        with. Before the current data began: a negative number."""
        layout = next((layout for layout in reversed(self.counters.layouts) if layout.from_step <= step),
                      self.counters.layouts[0])
        return layout.from_batch + (step - layout.from_step) * layout.batches_per_step

    def source_tokens(self, counts: list[int], names: list[str]) -> dict[str, int]:
        """This rank's tokens per source since step 0, by name: the current data's `counts` (per source of `names`)
        and those trained on before it."""
        totals = dict(self.counters.source_tokens_before)
        for name, count in zip(names, counts, strict=True):
            totals[name] = totals.get(name, 0) + count
        return totals

    def write_record(self, folder: str) -> None:
        """The identity record into `folder` (the output folder, a checkpoint), atomically: a crash leaves the old
        record or the new one."""
        with written_atomically(os.path.join(folder, RUN_IDENTITY)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record.to_json(), f, indent=1, sort_keys=True)

    def save(self, checkpoint: str, rank: int, main: bool, streams: dict[int, dict], window: LogWindow,
             source_counts: list[int], source_names: list[str]) -> None:
        """Rank `rank`'s state into `checkpoint` (and, by the main process, the identity record): `streams`, the data
        streams' states now; `window`, the logging window now (with the Trainer's running loss); `source_counts`, the
        current data's tokens per source of `source_names` (this rank's)."""
        self.counters.source_tokens = self.source_tokens(source_counts, source_names)
        torch.save({"counters": asdict(self.counters), "window": asdict(window),
                    "data": {str(index): state for index, state in streams.items()}},
                   os.path.join(checkpoint, run_state_file(rank)))
        if main:
            self.write_record(checkpoint)


def read_record(folder: str) -> RunRecord | None:
    """The identity record in `folder`, None if it holds none."""
    try:
        with open(os.path.join(folder, RUN_IDENTITY), encoding="utf-8") as f:
            return RunRecord.from_json(json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArgumentError(f"cannot read {os.path.join(folder, RUN_IDENTITY)}: {err}") from None


def check_resume(record: RunRecord, identity: dict, allowed: set[str], checkpoint: str, step: int) -> list[str]:
    """The parts that changed since `checkpoint` and are allowed; refuses, in one line, what is not. `record` is the
    checkpoint's: its newest segment is what the checkpoint was trained with."""
    found = changes(record.identity, identity)
    never = {part: found.pop(part) for part in ("model", "tokenizer") if part in found}
    if never:
        listed = "; ".join(item for part in never.values() for item in part)
        raise ArgumentError(f"cannot resume from {checkpoint}: this command has another model or tokenizer ({listed}); "
                            "a run's weights keep their shape and vocabulary: use another --output_dir (to start "
                            f"from these weights, --model_name_or_path {checkpoint})")
    if any(item.startswith("world_size:") for item in found.get("batch", ())):
        raise ArgumentError(f"cannot resume from {checkpoint} with another number of processes "
                            f"({'; '.join(found['batch'])}): each rank's data position is its own")
    refused = {part: items for part, items in found.items() if part not in allowed}
    if refused:
        listed = "; ".join(f"{part}: {', '.join(items)}" for part, items in refused.items())
        raise ArgumentError(f"cannot resume from {checkpoint} with other settings than its run's ({listed}): run the "
                            f"same command, or pass --allow_changes {','.join(refused)} to take them from step "
                            f"{step} on")
    return sorted(found)
