"""Preemption-safe training: a checkpoint on SIGTERM (and on SIGUSR1 / SIGUSR2 where asked for), then a clean exit.

Cluster schedulers announce a preemption or a time limit with a signal and kill the job a grace period later
(SLURM: SIGTERM, then SIGKILL after ``KillWait``, 30 s by default; ``--signal=USR1@90`` sends SIGUSR1 90 s before
the time limit; Kubernetes: SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``). Like PyTorch Lightning's
fault-tolerant training, the handler only sets a flag; the current optimizer step finishes, the step end asks the
Trainer for a checkpoint and a stop (every process agrees on the step: the flags are all-reduced), the checkpoint is
written complete (``.incomplete/`` then renamed, :mod:`mmreid.training.checkpoints`), and ``train.py`` exits with
status 128 + the signal number (143 for SIGTERM, 138 for SIGUSR1), the shell's convention for "ended by a signal".
``--resume`` continues from that step with the uninterrupted run's weights, bit for bit.
"""

from __future__ import annotations

import logging
import signal

import torch
from transformers import TrainerCallback

__all__ = ["CHECKPOINT_SIGNALS", "Preempted", "PreemptionCallback"]

logger = logging.getLogger(__name__)

# The signals --checkpoint-on-signal accepts (SIGINT is Ctrl-C: it stops at once, with one line, no checkpoint).
CHECKPOINT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class Preempted(Exception):
    """Training stopped on a signal after writing a complete checkpoint; ``train.py`` exits with ``exit_status``."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_status = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; complete checkpoint "
                         f"{checkpoint}; continue with --resume (exit status {self.exit_status})")


class PreemptionCallback(TrainerCallback):
    """Installs the signal handlers while training runs and turns a received signal into save + stop at the end of
    the current optimizer step. ``signals``: names among :data:`CHECKPOINT_SIGNALS`."""

    def __init__(self, signals=("SIGTERM",)):
        self.signals = [signal.Signals[name] for name in signals]
        self.received: int | None = None  # the signal this process got
        self.stopped_signal: int | None = None  # the signal all processes stopped on
        self.stopped_step: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            logger.warning("received %s: writing a checkpoint at the end of this optimizer step, then stopping",
                           signal.Signals(signum).name)

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _agreed_signal(self, args) -> int:
        """The signal any process received (0: none); one all-reduce per step when several processes train."""
        received = self.received or 0
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([received], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item())
        return received

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_signal is None:
            received = self._agreed_signal(args)
            if received:
                self.stopped_signal, self.stopped_step = received, state.global_step
                control.should_save = True
                control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_step == state.global_step:
            control.should_save = False  # the step end just wrote this step's checkpoint
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()
