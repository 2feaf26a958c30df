"""What long commands report while they run: a progress line on a terminal, nothing otherwise, and one summary of
the chunks that missed a ``--psnr`` target instead of a warning per chunk."""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
import warnings

from ..errors import PsnrTargetWarning


class Progress:
    """``progress(done, total)`` redraws one line on stderr, at most 5 times a second, only where stderr is a
    terminal (a log file or a pipe gets no ``\\r`` lines); :meth:`close` ends the line. ``seconds``: time since
    it was made, for the summary every command prints."""

    def __init__(self, label: str, unit: str = "", *, enabled: bool = True, stream=None):
        self.label, self.unit = label, unit
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled and bool(isatty and isatty())
        self.start = time.perf_counter()
        self._drawn = 0.0
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.perf_counter()
        with self._lock:
            if done < total and now - self._drawn < 0.2:
                return
            self._drawn = now
            elapsed = now - self.start
            left = f", about {elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
            count = f"{done}/{total} {self.unit} " if self.unit else ""
            self.stream.write(f"\r{self.label}: {count}{100 * done // total}%, {elapsed:.0f} s{left}\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")  # the summary that follows replaces the line
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def dask_progress(progress: Progress):
    """Feeds a dask computation's finished tasks to ``progress`` (nothing without dask, or off a terminal)."""
    if not progress.enabled:
        yield
        return
    try:
        from dask.callbacks import Callback
    except ImportError:
        yield
        return

    class _Tasks(Callback):
        def _start_state(self, dsk, state):
            self.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))

        def _posttask(self, key, result, dsk, state, worker_id):
            progress(len(state["finished"]), self.total)

    with _Tasks():
        yield


class PsnrMisses:
    """Counts the chunks that missed a ``--psnr`` target (each a :class:`PsnrTargetWarning`) instead of showing
    them; other warnings are shown as before. :meth:`summary` is one line, or None when every chunk reached it."""

    _REACHED = re.compile(r"Got at most (-?[0-9.]+|inf|nan) dB")

    def __init__(self, target: float | None):
        self.target = target
        self.count = 0
        self.best: list[float] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def collecting(self):
        with warnings.catch_warnings():
            warnings.simplefilter("always", PsnrTargetWarning)  # count every chunk, not the first per source line
            show = warnings.showwarning

            def showwarning(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, PsnrTargetWarning):
                    found = self._REACHED.search(str(message))
                    with self._lock:
                        self.count += 1
                        if found:
                            self.best.append(float(found.group(1)))
                else:
                    show(message, category, filename, lineno, file, line)

            warnings.showwarning = showwarning  # restored by catch_warnings; dask's worker threads call it too
            yield self

    def summary(self, chunks: int | None = None, what: str = "chunks") -> str | None:
        if not self.count:
            return None
        of = f" of {chunks}" if chunks else ""
        if self.count == 1 and not chunks:
            what = what[:-1] if what.endswith("s") else what
        reached = ""
        if self.best:
            low, high = min(self.best), max(self.best)
            reached = f", {low:.2f} dB" if low == high else f", {low:.2f} to {high:.2f} dB"
        return (f"tec: warning: {self.count}{of} {what} cannot reach --psnr {self.target:g} dB at any quality: "
                f"written at the best level{reached}; lower --psnr, or use --max-error E for a guaranteed "
                "per-pixel bound.")
