"""Console output shared by the commands and the Flower apps: no log line twice, round results in
Flower's own log, progress bars with an ETA."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Opacus calls logging.basicConfig on import (opacus/utils/module_utils.py) with this format; in a
# Flower app process that root handler prints every line of Flower's logger a second time.
_OPACUS_ROOT_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"


def drop_opacus_root_handler() -> None:
    """Remove the root handler Opacus installs on import, and only that one."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.formatter is not None and handler.formatter._fmt == _OPACUS_ROOT_FORMAT:
            root.removeHandler(handler)


def flower_log(message: str) -> None:
    """A line in Flower's log (``flwr log``, ``flwr run --stream``), at INFO."""
    logging.getLogger("flwr").info(message)


def progress_bar(console: Console, *, status: bool = False, disable: bool = False) -> Progress:
    """A rich progress bar (done/total, elapsed, ETA) that disappears when done; lines printed through
    ``bar.console`` stay. Off a terminal rich draws nothing, so logs hold only those lines.
    ``status``: a column showing each task's ``status`` field (``add_task(..., status=...)``)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=True, disable=disable)
