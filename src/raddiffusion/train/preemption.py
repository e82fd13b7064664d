"""Stopping cleanly when a cluster pre-empts the job: SIGTERM (or SLURM's early SIGUSR1) ends the training
loop at a step boundary with the checkpoint written, so that ``--resume`` continues exactly.

:class:`Preemption` is a context manager around a training loop: while it is active, SIGTERM and SIGUSR1
only record their arrival (outside it they keep their previous behaviour). After every optimizer step the
loop calls :meth:`Preemption.stop_if_requested`: when any process of the job has seen a signal, every
process stops at that same step, the main one writes the checkpoint, and :class:`Preempted` is raised.
The command exits with 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1), the status a shell
reports for a process killed by that signal.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from . import distributed
from .distributed import Process

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Training stopped by a pre-emption signal after ``step``, with ``checkpoint`` written; one line."""

    def __init__(self, signal_number: int, step: int, checkpoint: Path, main: bool = True):
        self.signal_number, self.step, self.checkpoint, self.main = signal_number, step, Path(checkpoint), main
        super().__init__(f"stopped by {signal_name(signal_number)} after step {step}; checkpoint written to "
                         f"{checkpoint}; run the same command with --resume to continue")

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process killed by that signal."""
        return 128 + self.signal_number


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ignore_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoaders: their workers ignore SIGTERM / SIGUSR1.

    A cluster signals every process of the job; PyTorch's workers would die of a SIGTERM not sent by their
    parent (and the loader then fails the step). The main process decides when to stop and ends its workers.
    """
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class Preemption:
    """Record SIGTERM / SIGUSR1 while active (the previous handlers are restored on exit).

    Handlers can only be installed from the main thread; elsewhere the signals keep their behaviour
    and :meth:`stop_if_requested` only sees those of other processes.
    """

    def __init__(self, process: Process, signals: tuple[int, ...] = SIGNALS):
        self.process = process
        self.signals = signals
        self.received = 0  # number of the first signal that arrived, 0 for none
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _record(self, number: int, frame) -> None:
        if not self.received:
            self.received = number

    def requested(self) -> int:
        """The signal any process of the job has received (the highest number), 0 for none; all processes call it."""
        return distributed.global_max(self.received, self.process)

    def stop_if_requested(self, step: int, checkpoint: Path, save: Callable[[], None] | None = None) -> None:
        """After an optimizer step: when a signal has arrived, write the checkpoint with ``save`` (main process;
        None when it was just written), wait for every process and raise :class:`Preempted`."""
        number = self.requested()
        if not number:
            return
        if save is not None and self.process.is_main:
            save()
        distributed.barrier(self.process)
        raise Preempted(number, step, checkpoint, main=self.process.is_main)
