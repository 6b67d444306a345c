"""Why a command cannot start: :class:`StartupError`, and :class:`QuietLog`, which keeps a
library's log of a failing start-up check to itself."""

from __future__ import annotations

import logging


class StartupError(Exception):
    """Something outside modelmon keeps a command from starting (topics that do not fit, a
    broker that refuses, a directory that cannot be written). The CLI prints it as one line,
    ``modelmon: error: ...``, and exits with code 2; so it does with a ValueError (a bad
    setting) and an OSError (a file, a server that cannot be reached)."""


class QuietLog(logging.Handler):
    """While entered, the records of the named loggers (and their children's) stop there
    instead of reaching the application's handlers; the last warning or error is kept, for
    the one line that reports the failure. A client library retrying a server that does not
    answer logs every attempt.

    >>> with QuietLog("some.library") as quiet:
    ...     logging.getLogger("some.library.conn").error("refused")
    >>> quiet.last
    'refused'
    """

    def __init__(self, *names: str) -> None:
        super().__init__(logging.WARNING)
        self.loggers = [logging.getLogger(name) for name in names]
        self.last = ""
        self._propagate: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()

    def __enter__(self) -> QuietLog:
        self._propagate = [logger.propagate for logger in self.loggers]
        for logger in self.loggers:
            logger.addHandler(self)
            logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, propagate in zip(self.loggers, self._propagate, strict=True):
            logger.removeHandler(self)
            logger.propagate = propagate
