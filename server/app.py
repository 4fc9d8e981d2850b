"""The Flower ServerApp: read the run config, hand the grid to a FederationRun."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.runconfig import NUM_ROUNDS, RESUME, base_dir, resolve_run_paths
from server.audit import AUDIT_FILE, AuditLog
from server.config import load_federation
from server.run import FederationRun

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    config_file, out_dir = resolve_run_paths(run_config)
    config = load_federation(config_file, base=base_dir(run_config), output_dir=out_dir)
    rounds = int(run_config.get(NUM_ROUNDS) or 0) or None
    resume = bool(run_config.get(RESUME, False)) or config.resume
    logging.getLogger("flwr").setLevel(logging.INFO)  # Opacus lowers it on import
    audit = AuditLog(out_dir / AUDIT_FILE)
    FederationRun(config, num_rounds=rounds, resume=resume, audit=audit).execute(grid)
