"""The ``tec`` command line (:mod:`.commands`) and the demo of ``make demo`` (:mod:`.demo`)."""

from .commands import main

__all__ = ["main"]
