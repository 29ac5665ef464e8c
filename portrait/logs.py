"""The project's one logger setup: each process logs through the `portrait` logger to one stream, each line tagged
with the process (`portrait[<model>]` inside a Triton stub, `portrait serve` for the supervisor)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER = "portrait"


def setup_logging(tag: str, stream: TextIO | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure `portrait` (and its children, e.g. `portrait.serve`) once per process; later calls keep the first."""
    log = logging.getLogger(LOGGER)
    if not log.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False
    return log
