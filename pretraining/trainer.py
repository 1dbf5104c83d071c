"""`PretrainingTrainer`: the HF Trainer plus what pretraining on a stream needs and it lacks.

- O(1) data resume: the train DataLoader is torchdata's `StatefulDataLoader` (through accelerate's
  `use_stateful_dataloader`), one per rank over that rank's part of the stream; its state, which holds the packer's
  stream position and leftover tokens, is saved in every checkpoint (one file per rank) and loaded on resume,
  instead of the Trainer's default of re-reading and discarding every batch already seen.
- Crash-safe checkpoints: a manifest is written last (see `checkpoints.py`), and old checkpoints are
  rotated only after the new one is complete.
- Non-finite steps: an update whose gradient norm is NaN/Inf is skipped (the weights stay as they were)
  and counted, with or without clipping; after `max_nonfinite_steps` in a row training stops with
  `NonFiniteLossError`.
- Every logged value is computed here, so that callbacks only write, print and draw: throughput in every training
  row (step time, data wait, tokens/s, MFU, tokens seen; host timings, no device sync added), the data pass, a
  mixture's tokens per source, the fields `log_fields.LOG_FIELDS` derives; in every evaluation row the perplexity,
  a mixture's per-source losses and the `--eval_tasks` scores.

Private Trainer methods are overridden (`_save_checkpoint`, `_get_grad_norm`, `_load_optimizer_and_scheduler`,
`_issue_warnings_after_load`, `_tr_loss`): requirements.txt bounds transformers below its next major version.
"""

import json
import math
import os
import shutil
import time
from functools import partial

import torch
from accelerate.data_loader import prepare_data_loader
from datasets import concatenate_datasets
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from pretraining.checkpoints import newest_valid_checkpoint, remove_manifest, rotate_checkpoints, write_manifest
from pretraining.data import loader_source_token_counts, loader_stage_token_counts, stream_states
from pretraining.errors import NonFiniteLossError, SaveError, free_space
from pretraining.eval_tasks import TaskSuite
from pretraining.log_fields import (DATA_STAGE, EVAL_LOSS, EVAL_PREFIX, LOG_FIELDS, PERPLEXITY, STAGE_TOKENS_BY_SOURCE,
                                   TOKENS_BY_SOURCE)
from pretraining.run_files import RUN_IDENTITY, data_state_file, log_window_file
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
    def __init__(self, *args, step_meter: StepMeter, max_nonfinite_steps: int, source_names: list[str] | None = None,
                 stage_starts: list[int] | None = None, task_suite: TaskSuite | None = None,
                 resume_changes: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.step_meter = step_meter  # times the steps that this class fetches batches for
        self.max_nonfinite_steps = max_nonfinite_steps
        self.source_names = source_names or []  # a mixture's sources, in the packer's order
        self.stage_starts = stage_starts or [0]  # the steps at which the data stages start (one stage: [0])
        self.task_suite = task_suite  # --eval_tasks, scored at every evaluation
        self.resume_changes = set(resume_changes)  # what --allow_changes took on this resume (run_folder.py)
        self.resume_from = None  # the checkpoint given to train(): it also holds each rank's data position
        self.nonfinite_in_a_row = 0
        self.skipped_since_log = 0
        self.data_pass = 0  # the latest pass over the training data that a batch came from (1 for the first)
        self.eval_sources = None  # during a mixture's evaluation: source name -> its blocks
        self._timed_optimizer = None
        self.resumed_window = None  # a resumed checkpoint's logging window, restored at the first step

    def train(self, resume_from_checkpoint=None, **kwargs):
        self.resume_from = resume_from_checkpoint
        self.resumed_window = None
        if resume_from_checkpoint is not None:
            path = os.path.join(resume_from_checkpoint, log_window_file(self.args.process_index))
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    self.resumed_window = json.load(f)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
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

    def log_window(self) -> dict:
        """What the next training row averages over (the steps since the last row): saved in every checkpoint, so
        that the first row after a resume is the uninterrupted run's."""
        meter = self.step_meter
        return {"loss_sum": float(self._tr_loss), "last_logged_step": self._globalstep_last_logged,
                "skipped": self.skipped_since_log, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "meter": {"steps": meter.steps, "seconds": meter.seconds, "data_wait": meter.data_wait}}

    def restore_log_window(self, window: dict) -> None:
        self._tr_loss += window["loss_sum"]
        self._globalstep_last_logged = window["last_logged_step"]
        self.skipped_since_log, self.nonfinite_in_a_row = window["skipped"], window["nonfinite_in_a_row"]
        meter = self.step_meter
        meter.steps, meter.seconds, meter.data_wait = (window["meter"][key] for key in ("steps", "seconds",
                                                                                       "data_wait"))

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        # a step ends when its optimizer step has run: before the step-end callbacks, whatever their order
        inner = optimizer
        while hasattr(inner, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch optimizer
            inner = inner.optimizer
        if inner is not self._timed_optimizer:
            inner.register_step_post_hook(lambda *_: self.step_meter.step_done())
            self._timed_optimizer = inner
        return optimizer

    def get_train_dataloader(self):
        # Built here rather than by the Trainer because every rank already reads only its own part of the
        # stream (data/splits.py): accelerate would wrap the IterableDataset once more so that each rank reads
        # everything and keeps one batch in world_size, and that wrapper has no state_dict for an O(1) resume.
        # Preparing it as a one-process loader keeps device placement.
        args = self.args
        workers = args.dataloader_num_workers
        if self.resume_from is not None and "data" not in self.resume_changes:  # new data starts afresh
            # the streams' states, not torchdata's whole state: that one only loads with the worker count it was
            # saved with, while the streams go on under any (data/packing.py). Restored before the loader exists:
            # accelerate asks it for a state_dict at once, and torchdata then forks its workers with the dataset as it
            # is at that moment.
            path = os.path.join(self.resume_from, data_state_file(args.process_index))
            self.train_dataset.resume_streams(stream_states(torch.load(path, weights_only=True)))
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers and workers > 0,
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

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if "schedule" in self.resume_changes and checkpoint is not None:
            # --allow_changes schedule: the checkpoint's optimizer keeps its moments, with this command's settings
            decay = set(self.get_decay_parameter_names(self.model))
            names = {id(p): n for n, p in self.model.named_parameters()}
            for group in self.optimizer.param_groups:
                in_decay = any(names.get(id(p)) in decay for p in group["params"])
                group.update(weight_decay=self.args.weight_decay if in_decay else 0.0,
                             betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon)
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
                self.lr_scheduler.base_lrs = [self.args.learning_rate] * len(self.lr_scheduler.base_lrs)
        # The saved learning rate is the saved schedule's value for the next step. When max_steps grew
        # (the recipe's +50 extension) that is the old schedule's final 0: take the new schedule's value,
        # so step N+1 trains too. With an unchanged max_steps both are the same number.
        scheduler = self.lr_scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            scheduler._last_lr = lrs

    def _issue_warnings_after_load(self, load_result):
        # A checkpoint stores tied weights once, under the embedding's name, and loading it ties lm_head again. The
        # Trainer only knows `_keys_to_ignore_on_save`, so it would call the tied lm_head.weight missing on every
        # resume; other missing or unexpected keys are still reported.
        tied = set(getattr(self.model, "_tied_weights_keys", None) or ())
        missing = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self.resumed_window is not None:  # the first step after a resume: the Trainer has just set its window up
            self.restore_log_window(self.resumed_window)
            self.resumed_window = None
        start = time.perf_counter()
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.step_meter.fetched(start, time.perf_counter())
        for batch in batches:  # a host-side int (data.collate_blocks): no sync, and not a model input
            self.data_pass = max(self.data_pass, batch.pop("data_pass", 0))
        return batches, num_items_in_batch

    def _get_grad_norm(self, model, grad_norm=None):
        # The Trainer calls this before every optimizer step, with the norm that clipping took or, when
        # max_grad_norm is 0, to compute one: the guard works with and without clipping.
        # The run's one device sync per optimizer step, the price of never applying a non-finite update. Returned as
        # the float it now is (as the Trainer's own docstring has it), so that logging reads no tensor again.
        grad_norm = float(super()._get_grad_norm(model, grad_norm))
        if math.isfinite(grad_norm):
            self.nonfinite_in_a_row = 0
            return grad_norm
        self.nonfinite_in_a_row += 1
        self.skipped_since_log += 1
        step = self.state.global_step + 1
        # the norm is all-reduced, so every rank skips the same steps; one of them says so
        if self.args.should_log:
            print(f"warning: step {step}: non-finite loss or gradient norm ({grad_norm}); update skipped "
                  f"({self.nonfinite_in_a_row} in a row)", flush=True)
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} non-finite steps in a row (up to step {step}); stopping. The last "
                "valid checkpoint is intact: lower --learning_rate or check the data, then resume"
            )
        # AdamW leaves parameters without a gradient untouched: this step changes no weight or moment
        model.zero_grad(set_to_none=True)
        return grad_norm

    def log(self, logs, start_time=None):
        if "loss" in logs:
            if not math.isfinite(logs["loss"]):
                # The Trainer empties its running loss with `tr_loss -= tr_loss`, which leaves a NaN in place: every
                # later row would be NaN too. (Its logging_nan_inf_filter would hide the NaN instead; it is off.)
                self._tr_loss.zero_()
            logs.update(self.step_meter.pop_fields(self.state.global_step), data_pass=self.data_pass)
            if self.args.device.type == "cuda":  # allocator statistics: host-side, no sync
                logs["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.args.device) / 2**30
            if self.skipped_since_log:
                logs["skipped_steps"] = self.skipped_since_log
                self.skipped_since_log = 0
            logs.update(self.source_token_fields())
            if len(self.stage_starts) > 1:
                logs[DATA_STAGE] = self.data_stage()
            logs.update({field.key: field.derive(logs, self.args) for field in LOG_FIELDS if field.derive})
        elif EVAL_LOSS in logs:
            # eval_loss -> eval_perplexity, a mixture's eval_loss/<source> -> eval_perplexity/<source>
            logs.update({EVAL_PREFIX + PERPLEXITY + key[len(EVAL_LOSS):]: perplexity(logs[key])
                         for key in [key for key in logs if key.split("/")[0] == EVAL_LOSS]})
        super().log(logs, start_time)

    def data_stage(self) -> int:
        """The data stage of the step just taken, 1 for the first."""
        return sum(start < self.state.global_step for start in self.stage_starts)

    def source_token_fields(self) -> dict[str, int]:
        """A mixture's tokens trained on per source since step 0, all ranks together, as `tokens_by_source/<source>`
        fields, and with data stages those of the current stage (`stage_tokens_by_source/<source>`). Read from the
        data loader's state (the packers count them), which every checkpoint saves: exact across resumes. Empty
        without a mixture."""
        if not self.source_names:
            return {}
        state = self.callback_handler.train_dataloader.state_dict()
        sources, stages = len(self.source_names), len(self.stage_starts)
        counts = torch.tensor([loader_source_token_counts(state, sources),
                               *loader_stage_token_counts(state, stages, sources)], dtype=torch.int64,
                              device=self.args.device)
        if self.args.world_size > 1:
            torch.distributed.all_reduce(counts)  # a few integers, at log steps only
        counts = counts.tolist()
        fields = {f"{TOKENS_BY_SOURCE}/{name}": count for name, count in zip(self.source_names, counts[0])}
        if stages > 1:  # counts[0] is the whole run's, counts[stage] that stage's
            fields.update({f"{STAGE_TOKENS_BY_SOURCE}/{name}": count
                           for name, count in zip(self.source_names, counts[self.data_stage()])})
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
        dataloader = self.callback_handler.train_dataloader
        os.makedirs(checkpoint, exist_ok=True)
        torch.save(dataloader.state_dict(), os.path.join(checkpoint, data_state_file(self.args.process_index)))
        with open(os.path.join(checkpoint, log_window_file(self.args.process_index)), "w", encoding="utf-8") as f:
            json.dump(self.log_window(), f)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # the run's identity as of this checkpoint: what a resume from it is compared against
            shutil.copyfile(os.path.join(self._get_output_dir(trial), RUN_IDENTITY),
                            os.path.join(checkpoint, RUN_IDENTITY))
            write_manifest(checkpoint)
            rotate_checkpoints(self._get_output_dir(trial), limit, keep=self.state.best_model_checkpoint)
