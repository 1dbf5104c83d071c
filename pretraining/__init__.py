"""The pretraining app's internals: what the commands at the project's root import (the app's Trainer callbacks are
at the root, `callbacks.py`: a script of a user's adds them to its own Trainer).

    arguments.py   the flags (ModelArguments, PretrainingArguments; data/arguments.py: DataArguments) and parsing
    errors.py      the error types and the one-line report
    devices.py     the default device, what it reports, the decisions from it (precision, one GPU per process),
                   GPU peaks for MFU
    hub.py         loading by Hub id or folder, and Hub failures in one line
    model.py       tokenizer, config and model of a run
    data/          the streamed, tokenized, packed data (see data/__init__.py)
    trainer.py     the Trainer with exact resume, crash-safe checkpoints, every logged value
    optimizers.py  --optim muon: Muon for the decoder layers' matrices and AdamW for the rest, as one optimizer
    run_state.py   everything a run carries across a restart, one record: identity, counters, log window, data position
    run_folder.py  the output folder owned by one run: what it holds, the lock
    checkpoints.py checkpoint integrity and the checkpoint to resume from
    throughput.py  step time, tokens/s, MFU, tokens seen; FLOPs per token
    signals.py     the exit statuses of a stop on a signal, DataLoader workers that leave it to the main process
    log_fields.py  the fields of the log rows: printed, plotted, named
    run_files.py   the name of every file a run writes; jsonl.py reads and writes its logs
    eval_tasks.py  lm-evaluation-harness scores during training
    curves.py      training_curves.png
    model_card.py  the model card and the end-of-run report
    serving.py     Llama-format and GGUF exports (gguf_writer.py)
"""
