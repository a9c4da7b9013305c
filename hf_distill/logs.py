"""The `hf_distill` logger: its warnings and one-line notices (e.g. each DDK update, a kernel fallback) show in any
script, as transformers' own messages do, without the script configuring logging.

The level is `HF_DISTILL_VERBOSITY` (debug, info, warning, error, critical) when set, else `info` on the main process
of each machine and `warning` on the others. A script that configures logging itself (a handler on the root logger,
e.g. `logging.basicConfig`) gets the records there instead, once.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

VERBOSITY_ENV = "HF_DISTILL_VERBOSITY"
LEVELS = {name: getattr(logging, name.upper()) for name in ("debug", "info", "warning", "error", "critical")}


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (it may be replaced after the handler is made), unless
    the root logger has a handler of its own (the record reaches that one through propagation) and `always` is off:
    the recipes print their progress lines on stderr in any case."""

    always = False

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.always or not logging.getLogger().handlers:
            super().emit(record)


def default_level() -> int:
    """`HF_DISTILL_VERBOSITY` when set to a known level, else INFO on each machine's main process, else WARNING."""
    name = os.environ.get(VERBOSITY_ENV, "").strip().lower()
    if name in LEVELS:
        return LEVELS[name]
    return logging.INFO if os.environ.get("LOCAL_RANK", "0") == "0" else logging.WARNING


def install_library_logger(level: int | None = None, always: bool = False) -> logging.Logger:
    """Give the `hf_distill` logger its stderr handler (once) and a level: `level`, or the [`default_level`] when the
    logger has none yet; with `always` the handler writes even when the root logger has handlers. Returns it."""
    package = logging.getLogger("hf_distill")
    handler = next((h for h in package.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
    handler.always = handler.always or always
    if level is not None:
        package.setLevel(level)
    elif package.level == logging.NOTSET:
        package.setLevel(default_level())
    return package
