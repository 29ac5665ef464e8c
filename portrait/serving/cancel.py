"""Cancelling a running denoise loop from another model: a flag file per job.

This Triton's Python backend cannot cancel a BLS request it has sent, so the `portrait` model
passes a job id to `denoise` and, when its own client cancels, raises that job's flag; the loop
checks it every step. Files on the same host work across model processes and instances.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
CANCEL_DIR = Path(tempfile.gettempdir()) / "portrait-cancel"


def flag_path(job_id: str) -> Path:
    if not JOB_ID.match(job_id):
        raise ValueError(f"job id must be 32 hex digits, got {job_id!r}")
    return CANCEL_DIR / job_id


def request_cancel(job_id: str) -> None:
    CANCEL_DIR.mkdir(parents=True, exist_ok=True)
    flag_path(job_id).touch()


def cancel_requested(job_id: str | None) -> bool:
    return job_id is not None and flag_path(job_id).exists()


def clear(job_id: str | None) -> None:
    if job_id is not None:
        flag_path(job_id).unlink(missing_ok=True)
