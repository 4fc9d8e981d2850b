"""The Flower ServerApp: read the run config, hand the grid to a FederationRun."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import federation_from_run_config
from common.protocol import RunConfigKey
from server.audit_log import AUDIT_FILE, AuditLog
from server.run import FederationRun

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    config = federation_from_run_config(run_config)
    rounds = int(run_config.get(RunConfigKey.NUM_ROUNDS) or 0) or None
    resume = bool(run_config.get(RunConfigKey.RESUME, False)) or config.resume
    logging.getLogger("flwr").setLevel(logging.INFO)  # Opacus lowers it on import
    audit = AuditLog(config.output_dir / AUDIT_FILE)
    FederationRun(config, num_rounds=rounds, audit=audit).prepare(resume=resume).execute(grid)
