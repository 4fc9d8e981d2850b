"""The run's append-only audit log (``audit.jsonl``): who was there, who trained with how many
examples and what epsilon, who refused, which update was rejected and why, what was written.

Lines are only ever appended (and fsynced), never rewritten, so the log survives restarts and
resumed runs and shows every attempt.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

AUDIT_FILE = "audit.jsonl"


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def __call__(self, event: str, fields: dict) -> None:
        self.append(event, fields)

    def append(self, event: str, fields: dict) -> None:
        line = json.dumps({"time": time.time(), "event": event, **fields}, sort_keys=True, default=str)
        with self._lock, self.path.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def events(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
