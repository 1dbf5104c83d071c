"""Pretrain (or continue pretraining) SmolLM2 with the Hugging Face Trainer on a streamed corpus.

    python run_pretrain.py                                  # the reference recipe: SmolLM2-135M, cosmopedia-v2
    python run_pretrain.py configs/demo.yaml                # a config file (YAML or JSON) ...
    python run_pretrain.py configs/demo.yaml --max_steps 50 # ... with flags after it overriding it
    python run_pretrain.py --help

Started again on an `output_dir` that holds checkpoints, it resumes from the newest complete one (data
position, optimizer, scheduler and random state included). `--max_steps 5050` after a finished 5000-step
run trains exactly steps 5001-5050 (see README, "Resuming and extending").

The story, one function a step: parse the flags, preflight (what can fail before any loading), the data, the
model, the trainer, training, the report. The pieces live in `pretraining/`.
"""

import os
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass
from functools import partial

import datasets
import torch
import transformers
from transformers import PreTrainedTokenizerBase, TrainerState, set_seed
from transformers.utils import logging as hf_logging

from callbacks import (CurvesCallback, GenerationSamplesCallback, JsonlLogCallback, LogTheLastStep, ProgressBarCallback,
                       ProgressLinesCallback, StopOnSignal)
from configuration_smollm2 import SmolLM2Config
from pretraining.arguments import ModelArguments, PretrainingArguments, comma_list, parse_args, traceback_requested
from pretraining.checkpoints import saved_step
from pretraining.data import DataArguments, TrainingData, build_datasets, collate_blocks
from pretraining.devices import (DeviceReport, device_peak_flops, peak_summary, precision_summary, probe_device,
                                 unused_gpus_hint)
from pretraining.errors import ArgumentError, HubUnavailableError, NonFiniteLossError, SaveError, free_space, report
from pretraining.eval_tasks import TaskSuite, check_eval_tasks
from pretraining.hub import raise_if_outage
from pretraining.model import build_config, build_model, load_tokenizer
from pretraining.model_card import write_report
from pretraining.optimizers import optimizer_cls_and_kwargs, optimizer_summary
from pretraining.run_files import TRAINER_STATE
from pretraining.run_folder import claimed_output_dir
from pretraining.run_state import CHANGEABLE, RunState, run_identity
from pretraining.signals import EXIT_STATUS, stopped_exit_status
from pretraining.serving import export_run
from pretraining.throughput import StepMeter, flops_per_token
from pretraining.trainer import PretrainingTrainer


def preflight(data_args: DataArguments, training_args: PretrainingArguments) -> None:
    """What can be checked before anything is loaded: what reads packages or folders (lm-eval and its tasks), and
    what spans the data's and the training's flags (the data stages within max_steps)."""
    problems = []
    late = [stage.start_step for stage in data_args.stages or () if stage.start_step >= training_args.max_steps]
    if late:
        problems.append(f"data_stages: a stage starts at step {late[0]}, not before --max_steps "
                        f"{training_args.max_steps}")
    if training_args.eval_tasks_path and not os.path.isdir(training_args.eval_tasks_path):
        problems.append(f"eval_tasks_path: no such folder: {training_args.eval_tasks_path}")
    elif comma_list(training_args.eval_tasks):  # lm-eval missing or a task it does not know: say so before training
        problems += check_eval_tasks(comma_list(training_args.eval_tasks), training_args.eval_tasks_path)
    if problems:
        raise ArgumentError("; ".join(problems))


def global_batch(training_args: PretrainingArguments) -> int:
    """Sequences per optimizer step, all processes together."""
    return (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size)


def build_trainer(data_args: DataArguments, training_args: PretrainingArguments, tokenizer, model,
                  data: TrainingData, run_state: RunState) -> PretrainingTrainer:
    """The trainer with every callback of the app, assembled here; `run_state` is what the run carries across
    restarts (a new run's, or the resumed checkpoint's after its transition)."""
    if data.evaluation is None:
        training_args.eval_strategy = "no"
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    peak = device_peak_flops(training_args.device, dtype, training_args.peak_tflops)
    step_meter = StepMeter(global_batch(training_args) * data_args.block_size, training_args.world_size,
                           flops_per_token(model.config, data_args.block_size, model.num_parameters()), peak,
                           run_state.window, run_state.counters, warn=print if training_args.should_log else None)
    tasks = comma_list(training_args.eval_tasks)
    callbacks = [
        ProgressLinesCallback if training_args.disable_tqdm else ProgressBarCallback,  # concise lines, not dicts
        JsonlLogCallback(),
        GenerationSamplesCallback(training_args.generation_prompts, training_args.generation_steps,
                                  training_args.generation_max_new_tokens),
        CurvesCallback(),
        LogTheLastStep(),
        StopOnSignal(),
    ]
    # document masking under flash attention: each batch as one row, for flash's variable-length path
    flatten = data_args.document_masking and model.config._attn_implementation == "flash_attention_2"
    trainer = PretrainingTrainer(
        model=model, args=training_args, train_dataset=data.train, eval_dataset=data.evaluation,
        processing_class=tokenizer, data_collator=partial(collate_blocks, flatten=flatten), callbacks=callbacks,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, training_args),  # --optim muon (else the Trainer's)
        run_state=run_state, step_meter=step_meter, max_nonfinite_steps=training_args.max_nonfinite_steps,
        source_names=[source.name for source in data.sources], mixture=data_args.mixture is not None,
        stage_starts=[stage.start_step for stage in data.stages or ()],
        task_suite=TaskSuite(tasks, training_args.eval_tasks_limit, training_args.eval_tasks_path,
                             training_args.per_device_eval_batch_size) if tasks else None,
    )
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer


def print_summary(model, data_args: DataArguments, training_args: PretrainingArguments, data: TrainingData,
                  peak_flops: float | None, device: DeviceReport) -> None:
    """The start-up lines: model, batch, device (precision and MFU peak, each with its reason), data (a mixture's
    sources with their normalized weights), and how each rank reads the stream."""
    if not training_args.should_log:
        return
    world = training_args.world_size
    sequences = global_batch(training_args)
    source = data_args.train_file or f"{data_args.dataset_name} ({data_args.dataset_config_name}, streamed)"
    if data_args.mixture:
        source = f"a mixture of {len(data_args.mixture)} sources"
    print(f"model: SmolLM2, {model.num_parameters():,} parameters, {model.config.num_hidden_layers} layers, "
          f"hidden {model.config.hidden_size}, vocab {model.config.vocab_size}")
    print(f"batch: {sequences} sequences x {data_args.block_size} tokens = {sequences * data_args.block_size:,} "
          f"tokens/step (per device {training_args.per_device_train_batch_size} x grad accum "
          f"{training_args.gradient_accumulation_steps} x {world} processes)")
    if training_args.device.type != device.type:  # --use_cpu on a GPU machine
        device = DeviceReport(training_args.device.type)
    name = f" ({device.name})" if device.name else ""
    print(f"device: {training_args.device}{name}; data: {source}; output: {training_args.output_dir}")
    print(f"precision: {precision_summary(training_args.bf16, training_args.fp16, device)}; "
          f"{peak_summary(peak_flops, device)}")
    print(optimizer_summary(model, training_args))
    hint = unused_gpus_hint(device, world)
    if hint:
        print(hint)
    for number, stage in enumerate(data.stages or (), start=1):
        if len(data.stages) > 1:
            print(f"data stage {number}: from step {stage.start_step}")
        for mixed in stage.mixture:
            print(f"mixture: {mixed.weight:.1%} {mixed.name}" + (f" (text column {mixed.text_column!r})"
                                                               if mixed.text_column != data_args.text_column else ""))
    if data_args.shuffle_buffer:
        print(f"shuffled: {data_args.shuffle_shards} shards at a time, a buffer of {data_args.shuffle_buffer:,} "
              f"documents, seed {training_args.seed}")
    if world > 1:
        print(f"data split between ranks: {data.split_description}")


def train(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments,
          device: DeviceReport) -> int:
    """The run, in its output folder (owned and locked for the run's life): returns the exit status."""
    set_seed(training_args.seed)
    if training_args.disable_tqdm:
        datasets.disable_progress_bars()  # datasets' own bars (map, file conversion) follow the Trainer's
    starting_points = [model_args.model_name_or_path, model_args.config_name]
    with claimed_output_dir(training_args, starting_points) as (folder, checkpoint):
        trained = saved_step(checkpoint) if checkpoint else 0
        if trained > training_args.max_steps:
            raise ArgumentError(f"{checkpoint} is at step {trained}, past --max_steps {training_args.max_steps}: "
                                f"pass --max_steps {trained} or more to go on from it, or another --output_dir")
        if trained == training_args.max_steps and saved_step(training_args.output_dir) == trained:
            if training_args.should_log:
                print(f"Training is already complete: step {trained} of --max_steps {training_args.max_steps}, the "
                      f"model is in {training_args.output_dir}. Nothing changed; pass a larger --max_steps to train "
                      "on.")
            return 0
        inputs = run_inputs(model_args, data_args, training_args, checkpoint, trained)
        tokenizer, run_state, data = inputs.tokenizer, inputs.run_state, inputs.data
        # inputs are all checked: from here on output_dir may change. The identity record is the run's first write.
        if training_args.process_index == 0:
            if checkpoint is None and training_args.replace_output_dir:
                folder.clear()
            run_state.write_record(training_args.output_dir)
        # trained == max_steps: the last checkpoint was saved but not the final model (stopped in between)
        finishing = trained == training_args.max_steps
        model = build_model(model_args, inputs.config, checkpoint)
        trainer = build_trainer(data_args, training_args, tokenizer, model, data, run_state)
        print_summary(model, data_args, training_args, data, trainer.step_meter.peak_flops, device)
        if training_args.should_log:
            print(f"Saving the final model of {os.path.basename(checkpoint)}" if finishing else
                  f"Resuming from {os.path.basename(checkpoint)}" if checkpoint else "Starting from step 0", flush=True)
            for part in inputs.changed:
                print(f"Changed on resume, from step {trained}: {part}: {CHANGEABLE[part]}", flush=True)
        if finishing:
            trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE))
        else:
            try:
                trainer.train(resume_from_checkpoint=checkpoint)
            except Exception as err:  # the Hub failing mid-stream is told apart from everything else, re-raised as is
                raise_if_outage(err, trainer.state.global_step, training_args.output_dir)
                raise
            stop = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))
            if stop.received is not None:
                if training_args.should_log:
                    cause = "Ctrl-C" if stop.received == signal.SIGINT else stop.received.name
                    print(f"Stopped by {cause} at step {trainer.state.global_step}; checkpoint saved. Run the same "
                          "command to resume.", flush=True)
                return stopped_exit_status(stop.received, training_args.world_size)
        save_final(trainer, model, model_args, data_args, training_args, run_state)
    return 0


@dataclass
class RunInputs:
    """What a run trains with, built and checked before anything in its output folder changes."""

    tokenizer: PreTrainedTokenizerBase
    config: SmolLM2Config
    run_state: RunState  # what the run goes on from
    changed: list[str]  # the parts of the run this command changes (--allow_changes), from the resumed step
    data: TrainingData  # this rank's


def run_inputs(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments,
               checkpoint: str | None = None, trained: int = 0) -> RunInputs:
    """The tokenizer, the config, the run state and this rank's data of a new run, or of a resume from `checkpoint`
    (at step `trained`): its run state after the transition to this command (what `--allow_changes` does not allow is
    refused), the data where the run state says (its streams, its data stages' loader batches)."""
    tokenizer = load_tokenizer(model_args)
    config = build_config(model_args, data_args, tokenizer)
    identity = run_identity(config, tokenizer, model_args, data_args, training_args)
    batches_per_step = training_args.gradient_accumulation_steps
    if checkpoint is None:
        # the rank's data streams: one per DataLoader worker of the run's first start (then any number may host them)
        run_state, changed = RunState.start(identity, max(1, training_args.dataloader_num_workers),
                                            batches_per_step), []
    else:
        run_state = RunState.load(checkpoint, training_args.process_index)
        changed = run_state.resume(identity, set(comma_list(training_args.allow_changes)), trained, batches_per_step)
    data = build_datasets(data_args, tokenizer, training_args.process_index, training_args.world_size,
                          seed=training_args.seed, blocks_per_batch=training_args.per_device_train_batch_size,
                          streams=run_state.record.data_streams,
                          stage_batches=[run_state.batch_of_step(stage.start_step) for stage in data_args.stages]
                          if data_args.stages else None)
    return RunInputs(tokenizer, config, run_state, changed, data)


def save_final(trainer: PretrainingTrainer, model, model_args: ModelArguments, data_args: DataArguments,
               training_args: PretrainingArguments, run_state: RunState) -> None:
    """The final model (weights, config with auto_map, model code, tokenizer), its exports, the report (curves and
    model card), the trainer state, and the push to the Hub."""
    model.config.use_cache = True  # the Trainer turns it off for training; users generate with the cache
    save_model_atomically(trainer, training_args)
    if training_args.should_save:
        for path in export_run(training_args.output_dir, comma_list(training_args.export_formats)):
            print(f"Exported {path}", flush=True)
        write_report(model, model_args, data_args, training_args, run_state.record)
        # written last: its step marks the final model as complete (a finished run started again stops here)
        trainer.save_state()
        print(f"Model saved to {training_args.output_dir}", flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"SmolLM2 pretraining: step {trainer.state.global_step}")
        print(f"Pushed to the Hub: {training_args.hub_model_id}", flush=True)


def save_model_atomically(trainer: PretrainingTrainer, training_args: PretrainingArguments) -> None:
    """trainer.save_model, through a temporary folder beside the model's files, swapped in file by file once all are
    written: a failure (a full disk) leaves an earlier final model (an extended run's) as it was."""
    output_dir = training_args.output_dir
    tmp = os.path.join(output_dir, f".final-model-{os.getpid()}")
    try:
        trainer.save_model(tmp)
        if training_args.should_save:
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(output_dir, name))
    except (OSError, RuntimeError) as err:
        raise SaveError(f"cannot save the final model in {output_dir}: {getattr(err, 'strerror', None) or err} "
                        f"({free_space(output_dir)} free on that disk); the checkpoints are intact: make room and run "
                        "the same command, which saves the final model of the last checkpoint") from err
    finally:
        if training_args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = traceback_requested(argv)
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # per-file save/load bars; the Trainer's own bar stays
    # torchdata 0.11 calls an API that torch deprecated; nothing for a user to act on
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
    try:
        device = probe_device()
        model_args, data_args, training_args = parse_args(argv, device, interactive=sys.stdout.isatty())
        show_traceback = show_traceback or training_args.traceback
        preflight(data_args, training_args)
        return train(model_args, data_args, training_args, device)
    except (ValueError, OSError, NonFiniteLossError, HubUnavailableError) as err:
        return report(err, show_traceback)
    except KeyboardInterrupt:  # Ctrl-C before training started (during training it stops at the step's end)
        if show_traceback:
            raise
        print("error: interrupted before training started; nothing was saved", file=sys.stderr)
        return EXIT_STATUS[signal.SIGINT]


if __name__ == "__main__":
    sys.exit(main())
