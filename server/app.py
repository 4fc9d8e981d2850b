"""The Flower ServerApp: read the run config, hand the grid to a FederationRun."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import load_federation, run_config_paths
from common.logs import drop_opacus_root_handler
from common.protocol import RunConfigKey
from server.audit_log import AUDIT_FILE, AuditLog
from server.ops.simulate import ensure_data
from server.run import FederationRun

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    config_file, out_dir = run_config_paths(run_config)
    config = load_federation(config_file, output_dir=out_dir)
    rounds = int(run_config.get(RunConfigKey.NUM_ROUNDS) or 0) or None
    resume = bool(run_config.get(RunConfigKey.RESUME, False)) or config.resume
    logging.getLogger("flwr").setLevel(logging.INFO)  # Opacus lowers it on import
    drop_opacus_root_handler()
    if config.institutions:  # a simulation: its generated data, made here when `flwr run .` starts it
        ensure_data(config)
    audit = AuditLog(config.output_dir / AUDIT_FILE)
    # Simulated institutions find their data and ledgers where this process resolved them.
    paths = {"config_file": str(config_file), "output_dir": str(config.output_dir)} if config.institutions else None
    FederationRun(config, num_rounds=rounds, audit=audit, simulation_paths=paths).prepare(resume=resume).execute(grid)
