"""Every run of an experiment in TensorBoard, and the experiment read back from those logs.

Each run writes its events into its own directory (`<experiment>/<variant>-seed<s>/`), so
`tensorboard --logdir <experiment>` shows one run per (variant, seed), live as they train:
- scalars: `train/loss` (nats per token), `train/lr`, `train/tokens_per_s` at every step, and
  `held_out/bits_per_byte` at every evaluation;
- hyperparameters (the HParams tab), written when the run finishes: the variant, seed, learning
  rate, steps, tokens per step, parameters, FLOPs per token and components, with the final held-out
  bits per byte as the metric.
A resumed run opens its log with `purge_step` = the first step it trains again, so TensorBoard
drops what the interrupted run logged past its last checkpoint and every step appears once; the
log is flushed at each checkpoint, so what a checkpoint holds, the log holds too.

`read_logs` reads an experiment back with TensorBoard's own reader (EventAccumulator); the
script's table and curves are made from it.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

HELD_OUT = "held_out/bits_per_byte"
# what the HParams tab shows of each run (result.json's keys), and the metric it compares them on
HYPERPARAMETERS = ("variant", "seed", "lr", "steps", "tokens_per_step", "parameters", "flops_per_token", "components")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("the experiment runner logs every run to TensorBoard: pip install -e '.[experiments]'") from None
    return SummaryWriter


def check_tensorboard() -> None:
    """Refused before anything trains, not after the first run."""
    _summary_writer()


class RunLog:
    """One run's TensorBoard log. save_every: the steps at which the run checkpoints (and the log
    is flushed); bits_per_nat turns the held-out loss (nats per token) into bits per byte."""

    def __init__(self, directory: Path, save_every: int, bits_per_nat: float):
        self.directory, self.save_every, self.bits_per_nat = directory, save_every, bits_per_nat
        self.writer = None

    def __call__(self, record: dict) -> None:
        """trainer.py's record of one step."""
        step = record["step"]
        if self.writer is None:  # opened at the first step trained: past 1, a resumed run
            if step > 1:
                after_the_last_log(self.directory)
            self.writer = _summary_writer()(str(self.directory), purge_step=step if step > 1 else None)
        self.writer.add_scalar("train/loss", record["loss"], step)
        self.writer.add_scalar("train/lr", record["lr"], step)
        self.writer.add_scalar("train/tokens_per_s", record["tokens_per_s"], step)
        if "held_out" in record:
            self.writer.add_scalar(HELD_OUT, record["held_out"] * self.bits_per_nat, step)
        if step % self.save_every == 0:
            self.writer.flush()

    def finish(self, result: dict) -> None:
        """The run's hyperparameters and final score, for the HParams tab."""
        from torch.utils.tensorboard.summary import hparams

        if self.writer is None:  # resumed from a checkpoint of its last step: nothing left to train
            self.writer = _summary_writer()(str(self.directory))
        values = {key: str(result[key]) if key == "components" else result[key] for key in HYPERPARAMETERS}
        for event in hparams(values, {HELD_OUT: result["bits_per_byte"]}):
            self.writer.file_writer.add_summary(event)
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def after_the_last_log(directory: Path) -> None:
    """Wait, if need be, for the second after the newest event file's. TensorBoard reads a run's
    event files in the order of their names, which begin with the second each was opened: a resumed
    run's file must sort after the interrupted run's, or the purge would fall on the wrong events."""
    opened = [int(path.name.split(".")[3]) for path in directory.glob("events.out.tfevents.*")]
    while opened and time.time() < max(opened) + 1:
        time.sleep(0.05)


def read_run(directory: Path) -> dict:
    """One run as its log holds it: the hyperparameters, the median tokens/s and the held-out curve
    (TensorBoard keeps scalars in float32: within 1e-7 of result.json's, relatively)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # a resumed run's purge is expected, not news
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every step
    events.Reload()
    content = events.PluginTagToContent("hparams").get("_hparams_/session_start_info")
    if content is None:
        raise ValueError(f"{directory} holds no finished run's log (no hyperparameters written)")
    written = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    run = {key: getattr(value, value.WhichOneof("kind")) for key, value in written.items()}
    for key in ("seed", "steps", "tokens_per_step", "parameters", "flops_per_token"):
        run[key] = int(run[key])
    run["tokens_per_s"] = statistics.median(e.value for e in events.Scalars("train/tokens_per_s"))
    run["curve"] = [{"step": e.step, "tokens": e.step * run["tokens_per_step"], "bits_per_byte": e.value}
                    for e in events.Scalars(HELD_OUT)]
    run["bits_per_byte"] = run["curve"][-1]["bits_per_byte"]
    return run


def read_logs(directory: str | Path, names: list[str]) -> list[dict]:
    """The runs named (their directories under the experiment's), read back from their logs."""
    return [read_run(Path(directory) / name) for name in names]
