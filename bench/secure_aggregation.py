"""The cost of a secure round (aggregation.secure, Flower's SecAgg+) against a plain one, side by side.

For 3, 10 and 50 institutions holding the demo's model (configs/demo.yaml), one round each way over a
local grid (server/ops/local_grid.py: the real ClientApp and the real server code exchanging real
Flower messages in one process, sizes in Flower's wire format). Training is replaced by the same
prepared update in both rounds (a fixed random move of every trained tensor), so the table shows the
protocol's cost alone: bytes each way per institution, the server's time, the institutions' time (all
of them together, one after another), and how far the secure aggregate lies from the plain one.

    .venv/bin/python bench/secure_aggregation.py [--institutions 3 10 50]

Prints a markdown report on stdout (``bench/run_all.py`` stores it in ``bench/results/``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app
from client.agent import InstitutionAgent, TrainOutcome
from common import protocol as p
from common.config import AggregationSection, SecureAggregationSection, load_federation
from common.data.writers import write_split_tables
from common.finetuning import trainable_names
from common.model import GenomicTransformer
from common.protocol import Status
from common.synthetic.generator import generate
from server.ops.local_grid import LocalGrid
from server.secure_aggregation import run_secure_round, secure_layout
from server.strategy import SpeciesFedAvg

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
SPECIES = ("human", "mouse", "fruit_fly", "yeast")
TASKS = ("promoter", "coding")


def prepared_train(self, model, *, run_id, server_round, num_rounds=None, attempt=1):
    """The same move of every trained tensor in both protocols (seeded by the institution's name)."""
    examples = {t: len(d) for t, d in self.data("train").items()}
    generator = torch.Generator().manual_seed(sum(map(ord, self.config.name)))
    names = trainable_names(model, mode="all", tasks=examples)
    weights = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()
               if k in names}
    return TrainOutcome(Status.TRAINED, 1.0, 1e-5, 8.0, examples=examples, weights=weights)


def institutions(root: Path, n: int) -> dict[int, dict]:
    nodes = {}
    for i in range(n):
        name, species = f"site-{i:02d}", SPECIES[i % len(SPECIES)]
        tasks = list(TASKS) if i % 3 else ["promoter"]  # heads trained by different subsets
        for j, task in enumerate(tasks):
            records = generate(task=task, species=species, n=24, seed=100 * i + j,
                               length=170 if task == "promoter" else 120).records
            write_split_tables(root / name / task, {"train": records[:20], "val": records[20:22], "test": records[22:]})
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "species": species, "tasks": tasks, "data_dir": name,
                                        "state_dir": f"state/{name}", "device": "cpu",
                                        "privacy": {"epsilon": 8.0, "delta": 1e-3, "noise_multiplier": 1.0}}))
        nodes[1000 + i] = {"institution": str(path)}
    return nodes


def one_round(nodes: dict[int, dict], *, secure: bool, neighbours: float = 1.0) -> dict:
    federation = load_federation(DEMO)
    torch.manual_seed(0)
    model = GenomicTransformer(federation.model, tasks=TASKS)
    arrays = ArrayRecord(model.state_dict())
    strategy = SpeciesFedAvg(aggregation=AggregationSection(), min_train_institutions=2, min_available_nodes=len(nodes),
                             expected_names=lambda tasks: trainable_names(model, mode="all", tasks=tasks))
    strategy.set_global(arrays)
    config = ConfigRecord({p.MODEL_CONFIG: json.dumps(federation.model.to_dict()), p.TASKS: json.dumps(list(TASKS)),
                           p.TRAINING: federation.training.model_dump_json(), p.NUM_ROUNDS: 1})
    client_app._AGENTS.clear()
    grid = LocalGrid(client_app.app, nodes)
    started = time.perf_counter()
    if secure:
        layout = secure_layout(trainable_names(model, mode="all", tasks=TASKS), strategy.global_weights)
        result = run_secure_round(grid, strategy, server_round=1, arrays=arrays, train_config=config,
                                  settings=SecureAggregationSection(neighbours=neighbours), timeout=600, layout=layout, clip=None)
        new = strategy.aggregate_secure(1, result)
    else:
        replies = grid.send_and_receive(strategy.configure_train(1, arrays, config, grid))
        new, _ = strategy.aggregate_train(1, replies)
    wall = time.perf_counter() - started
    return {"weights": {k: v.numpy() for k, v in new.to_torch_state_dict().items()},
            "server_s": wall - grid.node_seconds, "nodes_s": grid.node_seconds,
            "sent": grid.bytes_sent / len(nodes), "received": grid.bytes_received / len(nodes),
            "parameters": sum(v.numel() for v in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--institutions", type=int, nargs="+", default=[3, 10, 50])
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    InstitutionAgent.train = prepared_train
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="secure-bench-") as work:
        for n in args.institutions:
            nodes = institutions(Path(work) / f"n{n}", n)
            plain = one_round(nodes, secure=False)
            for neighbours in [1.0] + ([0.2] if n >= 50 else []):  # SecAgg+'s point: fewer key shares
                secure = one_round(nodes, secure=True, neighbours=neighbours)
                error = max(float(np.max(np.abs(secure["weights"][k].astype(np.float64) - v)))
                            for k, v in plain["weights"].items())
                rows.append((n if neighbours == 1.0 else f"{n}, neighbours 0.2", plain, secure, error))
    print("# Secure aggregation: the cost of a round (bench/secure_aggregation.py)\n")
    print(f"The demo's model ({rows[0][1]['parameters']:,} parameters, two task heads trained by different "
          "subsets), one round each way over a local grid, training replaced by the same prepared update; "
          "Flower's SecAgg+ with every institution a neighbour of every other (`neighbours` 1.0, the default) "
          "unless the row says otherwise, "
          "reconstruction threshold 0.6, 2^22 quantisation levels in ±2. Bytes in Flower's wire format per "
          "institution and round; times on one thread, the institutions one after another.\n")
    print("| institutions | plain: to / from each (kB) | secure: to / from each (kB) | bytes × | "
          "plain: server / institutions (s) | secure: server / institutions (s) | time × | max |secure − plain| |")
    print("|---|---|---|---|---|---|---|---|")
    for n, plain, secure, error in rows:
        bytes_ratio = (secure["sent"] + secure["received"]) / (plain["sent"] + plain["received"])
        time_ratio = (secure["server_s"] + secure["nodes_s"]) / (plain["server_s"] + plain["nodes_s"])
        print(f"| {n} | {plain['sent'] / 1e3:.0f} / {plain['received'] / 1e3:.0f} | "
              f"{secure['sent'] / 1e3:.0f} / {secure['received'] / 1e3:.0f} | {bytes_ratio:.2f} | "
              f"{plain['server_s']:.2f} / {plain['nodes_s']:.2f} | {secure['server_s']:.2f} / {secure['nodes_s']:.2f} | "
              f"{time_ratio:.1f} | {error:.1e} |")


if __name__ == "__main__":
    main()
