"""`PretrainingTrainer`: the HF Trainer plus what pretraining on a stream needs and it lacks.

- O(1) data resume: the train DataLoader is torchdata's `StatefulDataLoader` (through accelerate's
  `use_stateful_dataloader`), one per rank over that rank's part of the stream; the data streams' states are part of
  the run state (`run_state.py`) that every checkpoint saves, and a resume restores them instead of the Trainer's
  default of re-reading and discarding every batch already seen.
- Crash-safe checkpoints: a manifest is written last (see `checkpoints.py`), and old checkpoints are
  rotated only after the new one is complete; a failed save is one line, the unfinished checkpoint removed.
- Non-finite steps: an update whose gradient norm is NaN/Inf is skipped (the weights stay as they were)
  and counted, with or without clipping; after `max_nonfinite_steps` in a row training stops with
  `NonFiniteLossError`.
- Every logged value is computed here, so that callbacks only write, print and draw (and so that trackers such as
  TensorBoard, which the Trainer calls before the app's callbacks, get them too): throughput in every training row
  (step time, data wait, tokens/s, MFU, tokens seen: `throughput.StepMeter`; host timings, no device sync added), the
  data pass, a mixture's tokens per source, the data stage, the fields `log_fields.LOG_FIELDS` derives; in every
  evaluation row the perplexity, a mixture's per-source losses and the `--eval_tasks` scores.

What no public hook of the Trainer does (transformers 5.x), and so is overridden:
- `_load_optimizer_and_scheduler` (private): the loaded optimizer keeps this command's settings (the checkpoint's
  param groups would replace them), and a checkpoint of another `--optim` is not loaded at all (its state and param
  groups are the other optimizer's; the scheduler's state is per group, and would fail to load). No hook comes between
  the optimizer's creation and this load.
- `_get_grad_norm` (private): the non-finite guard needs the gradient norm before the optimizer step; no callback
  event receives it (`on_pre_optimizer_step` has no norm), and computing it again would add a second reduction and
  a second device sync per step.
- `_save_checkpoint` (private): a checkpoint's completeness needs the Trainer's save wrapped: the manifest removed
  before and written after the run state, a failed save cleaned up into one line. `on_save` comes only after the
  Trainer's own rotation, which would count an incomplete newer checkpoint and delete the last complete one.
- `get_batch_samples`: where the Trainer fetches a step's batches: the step meter's data wait; and, at the first
  step, the resume's own adjustments (`resume_where_the_checkpoint_stopped`), once the Trainer has set its running
  loss up (`_tr_loss`, `_globalstep_last_logged`, no hook sets them) and loaded the optimizer and scheduler (the
  learning rate of this command's schedule).
- `log`: the fields above, computed before the Trainer hands the row to the trackers and callbacks.
- `evaluate`, `evaluation_loop`: a mixture's per-source losses in one evaluation row with the loss over all sources.
  A dict `eval_dataset` would run one evaluation per source, each logged as its own row, and no loss over all of
  them (what the log, the curves, the model card and `metric_for_best_model` read); and the `--eval_tasks` scores.
- `get_train_dataloader`: one stateful loader over this rank's own part of the stream (accelerate would split it
  again); `get_eval_dataloader`: its workers ignore a stop signal, as the training loader's do.
- `create_model_card`: a no-op: the app writes its own card, which the Trainer's push would overwrite.
- `train`: the training loader's workers shut down when training ends, however it ends.
requirements.txt bounds transformers below its next major version for the private ones.
"""

import math
import os
import shutil
import time
from dataclasses import replace
from functools import partial

import torch
from accelerate.data_loader import prepare_data_loader
from datasets import concatenate_datasets
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from pretraining.checkpoints import newest_valid_checkpoint, remove_manifest, rotate_checkpoints, write_manifest
from pretraining.data import data_pass, source_token_counts, stage_token_counts, stream_states
from pretraining.errors import NonFiniteLossError, SaveError, free_space
from pretraining.eval_tasks import TaskSuite
from pretraining.log_fields import (DATA_STAGE, EVAL_LOSS, EVAL_PREFIX, LOG_FIELDS, PERPLEXITY, STAGE_TOKENS_BY_SOURCE,
                                   TOKENS_BY_SOURCE, TOKENS_SEEN)
from pretraining.run_state import RunState
from pretraining.signals import ignore_stop_signals
from pretraining.throughput import StepMeter


def seed_and_ignore_stop_signals(worker_init_fn, worker_id: int) -> None:
    """An evaluation DataLoader worker's start: the Trainer's `worker_init_fn` (its seeding, or None), then
    `ignore_stop_signals`. A module-level function in a partial: spawned workers pickle it."""
    if worker_init_fn is not None:
        worker_init_fn(worker_id)
    ignore_stop_signals()


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 100 else float("inf")


class PretrainingTrainer(Trainer):
    def __init__(self, *args, run_state: RunState, step_meter: StepMeter, max_nonfinite_steps: int,
                 source_names: list[str], mixture: bool = False, stage_starts: list[int] | None = None,
                 task_suite: TaskSuite | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_state = run_state  # what the run carries across restarts: saved in every checkpoint
        self.step_meter = step_meter  # times the steps that this class fetches batches for
        self.add_callback(step_meter)  # its clock stops at the Trainer's on_optimizer_step event
        self.max_nonfinite_steps = max_nonfinite_steps
        self.source_names = source_names  # the sources trained on, in the packer's order
        self.mixture = mixture  # log the tokens per source (a mixture's)
        self.stage_starts = stage_starts or [0]  # the steps at which the data stages start (one stage: [0])
        self.task_suite = task_suite  # --eval_tasks, scored at every evaluation
        self.eval_sources = None  # during a mixture's evaluation: source name -> its blocks
        self.resumed = False  # resume_where_the_checkpoint_stopped has run in this train()
        tied = list(getattr(self.model, "_tied_weights_keys", None) or ()) if self.model.config.tie_word_embeddings \
            else []
        if tied:
            # A checkpoint stores tied weights once, under the embedding's name, and loading it ties lm_head again. The
            # Trainer calls the missing lm_head.weight a missing key on every resume unless the model lists it among
            # the keys it leaves out of a save, which a tied lm_head is (transformers' documented model attribute).
            self.model._keys_to_ignore_on_save = tied

    def train(self, *args, **kwargs):
        self.resumed = False
        try:
            return super().train(*args, **kwargs)
        finally:
            self.stop_data_workers()

    def stop_data_workers(self) -> None:
        """Shut the training DataLoader's workers down now that training is over. torchdata's loader keeps its
        iterator (and so its workers) for state_dict; left for the interpreter's exit, the workers would get
        multiprocessing's terminate(), a SIGTERM, which they ignore (signals.ignore_stop_signals): a hang. Dropping
        the iterator (torch's `_iterator`) shuts them down at once."""
        loader = getattr(self.callback_handler, "train_dataloader", None)
        loader = getattr(loader, "base_dataloader", loader)  # accelerate's wrapper around torchdata's loader
        if getattr(loader, "_iterator", None) is not None:
            loader._iterator = None

    def get_train_dataloader(self):
        # Built here rather than by the Trainer because every rank already reads only its own part of the
        # stream (data/splits.py): accelerate would wrap the IterableDataset once more so that each rank reads
        # everything and keeps one batch in world_size, and that wrapper has no state_dict for an O(1) resume.
        # Preparing it as a one-process loader keeps device placement.
        args = self.args
        workers = args.dataloader_num_workers
        if self.run_state.data is not None:
            # the streams' states, not torchdata's whole state: that one only loads with the worker count it was
            # saved with, while the streams go on under any (data/packing.py). Restored before the loader exists:
            # accelerate asks it for a state_dict at once, and torchdata then forks its workers with the dataset as it
            # is at that moment.
            self.train_dataset.resume_streams(self.run_state.data)
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator, num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
            worker_init_fn=ignore_stop_signals,  # the main process decides when to stop
        )
        # dispatch_batches=False: left to its default, rank 0 would read for everyone and send batches out
        dataloader = prepare_data_loader(loader, args.device, num_processes=1, process_index=0, put_on_device=True,
                                         dispatch_batches=False, non_blocking=self.accelerator.non_blocking,
                                         use_stateful_dataloader=True)
        return dataloader

    def get_eval_dataloader(self, eval_dataset=None):
        dataloader = super().get_eval_dataloader(eval_dataset)
        if self.args.dataloader_num_workers > 0:  # a signal mid-evaluation must not kill its workers either
            dataloader.worker_init_fn = partial(seed_and_ignore_stop_signals, dataloader.worker_init_fn)
        return dataloader

    def create_model_card(self, *args, **kwargs):
        """The app writes its own model card (model_card.py); the Trainer's would overwrite it on push."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if not self.resumed:  # the first step of train(): the Trainer has set its state up and loaded the checkpoint's
            self.resume_where_the_checkpoint_stopped()
            self.resumed = True
        start = time.perf_counter()
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.step_meter.fetched(start, time.perf_counter())
        return batches

    def resume_where_the_checkpoint_stopped(self) -> None:
        """At the first step, once the Trainer has set its logging state up (from scratch) and loaded the checkpoint's
        optimizer and scheduler (`_load_optimizer_and_scheduler`): the logging window goes on from the checkpoint's,
        and the learning rate is this command's schedule's, the same as the checkpoint's unless `--allow_changes
        schedule` or a larger `--max_steps` changed it."""
        window = self.run_state.window
        self._tr_loss += window.loss_sum
        self._globalstep_last_logged = window.last_logged_step
        if self.state.global_step == 0:
            return
        # The saved learning rate is the saved schedule's value for the next step. When max_steps grew (the recipe's
        # +50 extension) that is the old schedule's final 0: the new schedule's value, so that step N+1 trains too.
        # With the same schedule both are the same number.
        scheduler = self.lr_scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.base_lrs = [self.args.learning_rate] * len(scheduler.base_lrs)
            lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            scheduler._last_lr = lrs

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None and self.run_state.optimizer_changed:
            # another --optim wrote the checkpoint: its state (AdamW's moments, Muon's momenta) and param groups are
            # that optimizer's, and its scheduler's state is per group of them. This optimizer starts without state;
            # the schedule goes on from the checkpoint's step (its learning rate: resume_where_the_checkpoint_stopped).
            self.lr_scheduler.last_epoch = self.state.global_step
            return
        # this command's settings (weight decay, betas, Muon's momentum ...), which `--allow_changes schedule` may have
        # changed and the checkpoint's groups would replace; the learning rate is the schedule's
        settings = [{key: value for key, value in group.items() if key not in ("params", "lr")}
                    for group in self.optimizer.param_groups]
        super()._load_optimizer_and_scheduler(checkpoint)
        for group, own in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(own)

    def _get_grad_norm(self, model, grad_norm=None):
        # The Trainer calls this before every optimizer step, with the norm that clipping took or, when
        # max_grad_norm is 0, to compute one: the guard works with and without clipping.
        # The run's one device sync per optimizer step, the price of never applying a non-finite update. Returned as
        # the float it now is (as the Trainer's own docstring has it), so that logging reads no tensor again.
        grad_norm = float(super()._get_grad_norm(model, grad_norm))
        window = self.run_state.window
        if math.isfinite(grad_norm):
            window.nonfinite_in_a_row = 0
            return grad_norm
        window.nonfinite_in_a_row += 1
        window.skipped += 1
        step = self.state.global_step + 1
        # the norm is all-reduced, so every rank skips the same steps; one of them says so
        if self.args.should_log:
            print(f"warning: step {step}: non-finite loss or gradient norm ({grad_norm}); update skipped "
                  f"({window.nonfinite_in_a_row} in a row)", flush=True)
        if window.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{window.nonfinite_in_a_row} non-finite steps in a row (up to step {step}); stopping. The last "
                "valid checkpoint is intact: lower --learning_rate or check the data, then resume"
            )
        # AdamW and Muon leave parameters without a gradient untouched: this step changes no weight or moment
        model.zero_grad(set_to_none=True)
        return grad_norm

    def log(self, logs, start_time=None):
        if "loss" in logs:
            if not math.isfinite(logs["loss"]):
                # The Trainer empties its running loss with `tr_loss -= tr_loss`, which leaves a NaN in place: every
                # later row would be NaN too. (Its logging_nan_inf_filter would hide the NaN instead; it is off.)
                self._tr_loss.zero_()
            # the loader's state as of its last batch (accelerate keeps it at every batch): read, not computed
            streams = stream_states(self.callback_handler.train_dataloader.state_dict())
            logs.update(self.step_meter.pop_fields(), data_pass=data_pass(streams))
            if self.args.device.type == "cuda":  # allocator statistics: host-side, no sync
                logs["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.args.device) / 2**30
            window = self.run_state.window
            if window.skipped:
                logs["skipped_steps"] = window.skipped
                window.skipped = 0
            if self.mixture:
                logs.update(self.source_token_fields(streams))
            if len(self.stage_starts) > 1:
                logs[DATA_STAGE] = self.data_stage()
            logs.update({field.key: field.derive(logs, self.args) for field in LOG_FIELDS if field.derive})
        elif EVAL_LOSS in logs:
            # eval_loss -> eval_perplexity, a mixture's eval_loss/<source> -> eval_perplexity/<source>
            logs.update({EVAL_PREFIX + PERPLEXITY + key[len(EVAL_LOSS):]: perplexity(logs[key])
                         for key in [key for key in logs if key.split("/")[0] == EVAL_LOSS]})
            logs[EVAL_PREFIX + TOKENS_SEEN] = self.run_state.counters.tokens_seen  # scores against tokens (curves)
        super().log(logs, start_time)

    def data_stage(self) -> int:
        """The data stage of the step just taken, 1 for the first."""
        return sum(start < self.state.global_step for start in self.stage_starts)

    def source_token_fields(self, streams: dict[int, dict]) -> dict[str, int]:
        """A mixture's tokens trained on per source since step 0, all ranks together, as `tokens_by_source/<source>`
        fields (sources of earlier data too: `--allow_changes data`), and with data stages those of the current stage
        (`stage_tokens_by_source/<source>`). From the data streams' states (the packers count them) and the run
        state: exact across resumes."""
        names, stages = self.source_names, len(self.stage_starts)
        totals = self.run_state.source_tokens(source_token_counts(streams, len(names)), names)
        in_stage = stage_token_counts(streams, stages, len(names))[self.data_stage() - 1] if stages > 1 else []
        counts = torch.tensor([*totals.values(), *in_stage], dtype=torch.int64, device=self.args.device)
        if self.args.world_size > 1:
            torch.distributed.all_reduce(counts)  # a few integers, at log steps only
        counts = counts.tolist()
        fields = {f"{TOKENS_BY_SOURCE}/{name}": count for name, count in zip(totals, counts)}
        fields.update({f"{STAGE_TOKENS_BY_SOURCE}/{name}": count
                       for name, count in zip(names, counts[len(totals):])})
        return fields

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        # A mixture's held-out blocks come as a dict, source -> blocks. The Trainer would run one evaluation (and log
        # one row) per source, with no loss over all of them: here one evaluation logs both (`evaluation_loop`).
        if eval_dataset is None and isinstance(self.eval_dataset, dict):
            self.eval_sources = self.eval_dataset
            try:
                return super().evaluate(concatenate_datasets(list(self.eval_sources.values())), ignore_keys,
                                        metric_key_prefix)
            finally:
                self.eval_sources = None
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's evaluation, plus: with per-source eval data, the loss of each source's blocks
        (`eval_loss/<source>`) and of all of them (`eval_loss`, the mean over every block, as one evaluation of them
        all would give); with `--eval_tasks`, their scores (main process)."""
        if self.eval_sources:
            outputs = {name: super(PretrainingTrainer, self).evaluation_loop(
                self.get_eval_dataloader(blocks), description, prediction_loss_only, ignore_keys, metric_key_prefix)
                for name, blocks in self.eval_sources.items()}
            loss = f"{metric_key_prefix}_loss"
            samples = sum(output.num_samples for output in outputs.values())
            metrics = {loss: sum(output.metrics[loss] * output.num_samples for output in outputs.values()) / samples}
            metrics.update({f"{loss}/{name}": output.metrics[loss] for name, output in outputs.items()})
            output = EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)
        else:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
        if self.task_suite is not None and self.is_world_process_zero():
            scores = self.task_suite.score(self.model, self.processing_class, self.args.bf16)
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in scores.items()})
        return output

    def _save_checkpoint(self, model, trial):
        checkpoint = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
        try:
            self._write_checkpoint(model, trial, checkpoint)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError ("unexpected pos")
            # an unfinished checkpoint is never resumed from (no manifest), but it must not fill the disk either
            if self.args.should_save:
                shutil.rmtree(checkpoint, ignore_errors=True)
            reason = f"{type(err).__name__}: {str(err).splitlines()[0]}" if isinstance(err, RuntimeError) else (
                err.strerror or str(err))
            newest = newest_valid_checkpoint(self._get_output_dir(trial), warn=lambda message: None)
            kept = (f"the newest complete checkpoint, {os.path.basename(newest)}, is intact" if newest
                    else "no checkpoint is complete yet")
            raise SaveError(f"cannot save {checkpoint}: {reason} ({free_space(checkpoint)} free on that disk); {kept}: "
                            "make room and run the same command to resume") from err

    def _write_checkpoint(self, model, trial, checkpoint: str) -> None:
        # rotate (among complete checkpoints) only once the new one is complete, so that a crash mid-save
        # can never leave fewer valid checkpoints than save_total_limit promises
        if self.args.should_save:
            # saving over an older checkpoint of the same step: it stops counting as complete right away
            remove_manifest(checkpoint)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        os.makedirs(checkpoint, exist_ok=True)
        streams = stream_states(self.callback_handler.train_dataloader.state_dict())
        # the Trainer's running loss since the last row, and that row's step: the window the next row averages over
        window = replace(self.run_state.window, loss_sum=float(self._tr_loss),
                         last_logged_step=self._globalstep_last_logged)
        self.run_state.save(checkpoint, self.args.process_index, self.args.should_save, streams, window,
                            source_token_counts(streams, len(self.source_names)), self.source_names)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_manifest(checkpoint)
            rotate_checkpoints(self._get_output_dir(trial), limit, keep=self.state.best_model_checkpoint)
