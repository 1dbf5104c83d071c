"""The trainer's steps (pretraining/trainer.py as run_pretrain builds it): how often the host waits for the device.

    python -m pytest tests/unit/test_trainer.py -q
"""

from transformers import TrainerCallback

from helpers import host_syncs, in_process_trainer


class SyncsPerStep(TrainerCallback):
    """The host syncs counted by `syncs` between the Trainer's step events: in each step's first micro-step (from
    on_step_begin to on_substep_end) and from one step's end to the next (its data, its micro-steps, the gradient
    clipping and optimizer step, the step-end callbacks, and the logging of the step before, where there was one)."""

    def __init__(self, syncs):
        self.syncs = syncs
        self.micro_step, self.step = [], {}
        self._begin = self._last_end = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = self.syncs.count

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_step.append(self.syncs.count - self._begin)

    def on_step_end(self, args, state, control, **kwargs):
        if self._last_end is not None:  # the first step also holds the start-up
            self.step[state.global_step] = self.syncs.count - self._last_end
        self._last_end = self.syncs.count


def test_the_host_waits_for_the_device_once_per_optimizer_step_and_never_within_one(tmp_path, corpus):
    """8 optimizer steps of 2 micro-steps each, logged every 4th: no sync in a micro-step's forward and backward, one
    per optimizer step (the non-finite check of the gradient norm), and one more where a step is logged (the loss
    read for its row). Counted as `.item()`-like reads and blocking copies between devices (tests/helpers.py)."""
    syncs = host_syncs()
    counter = SyncsPerStep(syncs)
    trainer = in_process_trainer(str(tmp_path / "run"), corpus, [counter], max_steps=8, gradient_accumulation_steps=2,
                                 logging_steps=4, save_steps=100, eval_steps=100, generation_steps=0)
    with syncs:
        trainer.train()
    assert counter.micro_step == [0] * 8
    # step 5 also holds step 4's log row
    assert counter.step == {2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1, 8: 1}
