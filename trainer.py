"""`PretrainingTrainer`: the HF Trainer plus what pretraining on a stream needs and it lacks.

- O(1) data resume: the train DataLoader is torchdata's `StatefulDataLoader` (through accelerate's
  `use_stateful_dataloader`), one per rank over that rank's part of the stream; its state, which holds `PackedDataset`'s stream position and leftover
  tokens, is saved in every checkpoint (one file per rank) and loaded on resume, instead of the
  Trainer's default of re-reading and discarding every batch already seen.
- Crash-safe checkpoints: a manifest is written last (see `checkpoints.py`), and old checkpoints are
  rotated only after the new one is complete.
- Non-finite steps: an update whose gradient norm is NaN/Inf is skipped (the weights stay as they were)
  and counted, with or without clipping; after `max_nonfinite_steps` in a row training stops with
  `NonFiniteLossError`.
- Throughput in every training log row (step time, data wait, tokens/s, MFU, tokens seen), computed
  from host timings, so no device sync is added for it.
"""

import math
import os
import time

import torch
import transformers
from transformers import Trainer
from accelerate.data_loader import prepare_data_loader

from callbacks import ProgressBarCallback, ProgressLinesCallback, StepTimer
from checkpoints import remove_manifest, rotate_checkpoints, write_manifest


class NonFiniteLossError(RuntimeError):
    pass


def data_state_file(rank: int) -> str:
    return f"data_state_rank{rank}.pt"


class PretrainingTrainer(Trainer):
    def __init__(self, *args, data_state_dir: str | None = None, tokens_per_step: int, flops_per_token: float,
                 peak_flops: float | None, max_nonfinite_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_state_dir = data_state_dir
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.skipped_since_log = 0
        self.warned_mfu = False
        self.data_pass = 0  # the latest pass over the training data that a batch came from (1 for the first)
        # first in line, so that its step ends before samples are generated or checkpoints saved
        self.step_timer = StepTimer()
        self.callback_handler.callbacks.insert(0, self.step_timer)
        # concise lines instead of the Trainer's raw log dicts
        self.remove_callback(transformers.trainer_callback.ProgressCallback)
        self.remove_callback(transformers.trainer_callback.PrinterCallback)
        self.add_callback(ProgressLinesCallback if self.args.disable_tqdm else ProgressBarCallback)

    def get_train_dataloader(self):
        # Built here rather than by the Trainer because every rank already reads only its own part of the
        # stream (split_dataset_by_node in data.py): accelerate would wrap the IterableDataset once more so
        # that each rank reads everything and keeps one batch in world_size, and that wrapper has no
        # state_dict for an O(1) resume. Preparing it as a one-process loader keeps device placement.
        args = self.args
        workers = args.dataloader_num_workers
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        )
        # dispatch_batches=False: left to its default, rank 0 would read for everyone and send batches out
        dataloader = prepare_data_loader(loader, args.device, num_processes=1, process_index=0, put_on_device=True,
                                         dispatch_batches=False, non_blocking=self.accelerator.non_blocking,
                                         use_stateful_dataloader=True)
        if self.data_state_dir is not None:
            path = os.path.join(self.data_state_dir, data_state_file(args.process_index))
            dataloader.load_state_dict(torch.load(path, weights_only=True))
        return dataloader

    def create_model_card(self, *args, **kwargs):
        """The app writes its own model card (model_card.py); the Trainer's would overwrite it on push."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
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
        start = time.perf_counter()
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.step_timer.data_wait += time.perf_counter() - start
        for batch in batches:  # a host-side int (data.collate_blocks): no sync, and not a model input
            self.data_pass = max(self.data_pass, batch.pop("data_pass", 0))
        return batches, num_items_in_batch

    def _get_grad_norm(self, model, grad_norm=None):
        # The Trainer calls this before every optimizer step, with the norm that clipping took or, when
        # max_grad_norm is 0, to compute one: the guard works with and without clipping.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        # a device sync, once per step: the price of never applying a non-finite update
        if math.isfinite(float(grad_norm)):
            self.nonfinite_in_a_row = 0
            return grad_norm
        self.nonfinite_in_a_row += 1
        self.skipped_since_log += 1
        step = self.state.global_step + 1
        # the norm is all-reduced, so every rank skips the same steps; one of them says so
        if self.args.should_log:
            print(f"warning: step {step}: non-finite loss or gradient norm ({float(grad_norm)}); update skipped "
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
        if "loss" in logs and not math.isfinite(logs["loss"]):
            # The Trainer empties its running loss with `tr_loss -= tr_loss`, which leaves a NaN in place: every
            # later row would be NaN too. (Its logging_nan_inf_filter would hide the NaN instead; it is off.)
            self._tr_loss.zero_()
        if "loss" in logs:
            steps, compute, data_wait = self.step_timer.pop()
            logs["tokens_seen"] = self.state.global_step * self.tokens_per_step
            logs["data_pass"] = self.data_pass
            if steps:
                step_time = (compute + data_wait) / steps
                logs["step_time"] = step_time
                logs["data_wait"] = data_wait / steps
                logs["tokens_per_second"] = self.tokens_per_step / step_time
                per_device = logs["tokens_per_second"] / self.args.world_size
                logs["tokens_per_second_per_device"] = per_device
                mfu = per_device * self.flops_per_token / self.peak_flops if self.peak_flops else None
                if mfu is not None and mfu <= 1:
                    logs["mfu"] = mfu
                elif mfu is not None and not self.warned_mfu and self.args.should_log:
                    # above the peak can only mean a wrong --peak_tflops: a number that is not MFU is not logged
                    print(f"warning: the run does {mfu * self.peak_flops / 1e12:.1f} TFLOP/s per device, above "
                          f"the peak of {self.peak_flops / 1e12:g}: MFU is not logged (check --peak_tflops)", flush=True)
                    self.warned_mfu = True
            if self.args.device.type == "cuda":  # allocator statistics: host-side, no sync
                logs["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.args.device) / 2**30
            if self.skipped_since_log:
                logs["skipped_steps"] = self.skipped_since_log
                self.skipped_since_log = 0
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        # rotate (among complete checkpoints) only once the new one is complete, so that a crash mid-save
        # can never leave fewer valid checkpoints than save_total_limit promises
        checkpoint = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
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
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_manifest(checkpoint)
            rotate_checkpoints(self._get_output_dir(trial), limit, keep=self.state.best_model_checkpoint)
