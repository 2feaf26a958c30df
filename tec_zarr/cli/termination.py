"""SIGTERM and SIGHUP unwind the command like Ctrl-C does, so that its temporaries are removed.

``timeout``, SLURM (scancel, time limits), ``docker stop`` and Kubernetes end a process with SIGTERM, and a closed
terminal sends SIGHUP; Python's default for both is to die at once, without running ``finally`` blocks, which left
``OUT.tmp-<random>`` siblings behind. A handler someone else installed (or ``nohup``'s ignored SIGHUP) is kept.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(BaseException):
    """The process was asked to end (a BaseException, like KeyboardInterrupt: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def unwinding_on_termination():
    """Within the block, SIGTERM and SIGHUP (where the platform has them) raise :class:`Terminated`."""
    installed = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                installed[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)
