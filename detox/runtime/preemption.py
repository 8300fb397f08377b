"""Stop signals: finish the PPO step, checkpoint, then stop (or requeue).

SIGTERM (`scancel`, most preemptions), SIGINT (Ctrl-C) and the cluster's pre-timeout signal
(SLURM `--signal=USR2@<secs>`, what submitit sets up; `$SUBMITIT_PREEMPT_SIGNAL` names
another) each ask the run to stop. Inside the training loop the request waits for the step
to finish, so the trainer can write a checkpoint of a whole step; a second signal stops at
once. Outside the loop (loading, evaluating) the first signal stops at once: the newest
checkpoint on disk is then the resume point.

The handler a signal had before (submitit's requeue on USR2) is kept, and called by the
entry point once the checkpoint is written: checkpoint first, then requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

from detox.core.errors import Interrupted

log = logging.getLogger(__name__)


def preemption_signal() -> signal.Signals:
    """The cluster's pre-timeout signal: submitit's choice, USR2 unless $SUBMITIT_PREEMPT_SIGNAL says."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, signal.SIGUSR2)


class StopSignals:
    """Within `with StopSignals() as stop:`, the stop signals set `stop.received` (while
    `stop.deferring` is on) or raise `Interrupted` (otherwise, and on a second signal).
    A no-op outside the main thread, where Python cannot install handlers."""

    def __init__(self):
        self.signals = sorted({signal.SIGTERM, signal.SIGINT, preemption_signal()})
        self.received: int | None = None
        self.deferring = False
        self.step = 0  # the last finished step, for the message
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
        return False

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def _handle(self, signum: int, frame) -> None:
        if self.received is None and self.deferring:
            self.received = signum
            log.warning("%s received: finishing step %d, then a checkpoint and exit (send it again to stop "
                        "at once, without a checkpoint)", signal.Signals(signum).name, self.step + 1)
            return
        self.received = signum
        raise Interrupted(signal.Signals(signum).name, signum, self.step, None, self.chained(signum))

    def chained(self, signum: int) -> Callable[[], None] | None:
        """The handler `signum` had before ours, bound to this signal, if it was a function
        (submitit's requeue); None for the default dispositions and Python's KeyboardInterrupt."""
        previous = self._previous.get(signum)
        if not callable(previous) or previous is signal.default_int_handler:
            return None
        return lambda: previous(signum, None)

    def interrupted(self, checkpoint: str | None) -> Interrupted:
        """The exception that ends a run after a deferred signal, once `checkpoint` is written.
        (Data-parallel: a process that got no signal stops with the others, as if by SIGTERM.)"""
        signum = self.received if self.received is not None else signal.SIGTERM
        name = self.name or "a stop signal to another process"
        return Interrupted(name, signum, self.step, checkpoint, self.chained(signum) if self.received else None)
