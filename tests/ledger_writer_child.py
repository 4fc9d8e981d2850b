"""Helper for the ledger crash tests: a fork server whose children write a ledger until killed.

Importing Opacus costs seconds, so this process imports once and forks one writer per line read
from stdin:
    spawn STATE_DIR                a writer that records rounds in a loop until it is SIGKILLed
    spawn STATE_DIR CRASH_POINT    a writer that SIGKILLs itself at that point of its first write:
                                   file-fsync (temp file written, not yet durable or renamed),
                                   rename (temp file durable, not renamed), dir-fsync (renamed)
Lines on stdout (each one write() call, so lines of different processes never interleave):
    spawned <pid>          a writer started
    committed <pid> <n>    that writer's record_round returned; the ledger holds n rounds
    exited <pid> <status>  the writer is gone (reaped), so the file can be inspected
Usage: python tests/ledger_writer_child.py
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import traceback

from client.privacy.ledger import PrivacyLedger

WRITER_CONFIG = {"institution": "crash-test", "budget_epsilon": 1e6, "delta": 1e-5}
FSYNC_CALL = {"file-fsync": 0, "dir-fsync": 1}  # which os.fsync call of a write kills the writer


def say(line: str) -> None:
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def die(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inject_crash(point: str) -> None:
    """Make the ledger's own os.fsync / os.replace calls kill this process at `point`."""
    if point == "rename":
        os.replace = die
        return
    calls, real_fsync = itertools.count(), os.fsync

    def fsync(fd: int) -> None:
        if next(calls) == FSYNC_CALL[point]:
            die()
        real_fsync(fd)

    os.fsync = fsync


def write_forever(state_dir: str) -> None:
    ledger = PrivacyLedger.open(state_dir, **WRITER_CONFIG)
    pid = os.getpid()
    while True:
        ledger.record_round(run_id="crash", round=len(ledger.rounds), noise_multiplier=50.0,
                            sample_rate=0.01, steps=1)
        say(f"committed {pid} {len(ledger.rounds)}")


def run_writer(state_dir: str, crash_point: str | None) -> None:
    try:
        if crash_point:
            inject_crash(crash_point)
        write_forever(state_dir)
    except BaseException:
        traceback.print_exc()  # the test sees an exit status other than SIGKILL and fails
    finally:
        os._exit(1)  # never return into the server's loop


def spawn_writer(state_dir: str, crash_point: str | None) -> None:
    pid = os.fork()
    if pid == 0:
        run_writer(state_dir, crash_point)
    say(f"spawned {pid}")
    _, status = os.waitpid(pid, 0)
    say(f"exited {pid} {status}")


def main() -> None:
    for command in sys.stdin:
        words = command.split()
        if words[:1] == ["spawn"]:
            spawn_writer(words[1], words[2] if len(words) > 2 else None)


if __name__ == "__main__":
    main()
