"""Console progress of a training stage: one header line and one bar with the loss in its postfix.

transformers' `ProgressCallback` writes every log as a raw `{'loss': ...}` line under its bar (and `PrinterCallback`
prints them without one): a 150-step stage fills a screen with dicts. `show_stage_progress` swaps both for
`StageProgress`, so the run reads as a sequence of stages with ETAs.
"""

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

# Logged values shown in the bar's postfix, in this order, when present.
POSTFIX_KEYS = ("loss", "guide_loss")


class StageProgress(TrainerCallback):
    """Prints `header` when training begins, then one tqdm bar over the stage's steps (elapsed time and ETA) whose
    postfix holds the latest logged loss and guide loss. Only the main process prints.

    Example:

    ```python
    >>> trainer = TGATrainer(model, args=args, train_dataset=rows, processing_class=processor)
    >>> show_stage_progress(trainer, "arm tga · stage 2/2 instruction · 120 steps")
    >>> trainer.train()
    ```"""

    def __init__(self, header: str, description: str = "train"):
        self.header = header
        self.description = description
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            tqdm.write(self.header)
            self.bar = tqdm(total=state.max_steps, desc=self.description, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {key: f"{logs[key]:.4f}" for key in POSTFIX_KEYS if isinstance(logs.get(key), int | float)}
            if shown:
                self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def show_stage_progress(trainer: Trainer, header: str, description: str = "train", enabled: bool = True) -> None:
    """Replace `trainer`'s bar and log printing (its own, or an earlier `StageProgress`) by a `StageProgress`, or by
    nothing when not `enabled`."""
    for callback in (ProgressCallback, PrinterCallback, StageProgress):
        trainer.remove_callback(callback)
    if enabled:
        trainer.add_callback(StageProgress(header, description))


__all__ = ["POSTFIX_KEYS", "StageProgress", "show_stage_progress"]
