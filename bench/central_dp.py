"""Utility of institution-level DP at the server (issue 16 item 2), side by side in one run.

The demo federation (configs/demo.yaml: four institutions, four species, record-level DP at each)
trained once per setting of ``aggregation.central_dp`` — off, then noise multipliers σ at one clip
C — through the real simulation engine; the table gives each task's central headline metric after the
last round, the institution-level ε the server's accountant reports, and how many institution-rounds
were clipped.

    .venv/bin/python bench/central_dp.py [--sigmas 0.5 1.0] [--clip 1.0] [--rounds 5] [--work DIR]

Prints a markdown report on stdout (``bench/run_all.py`` stores it in ``bench/results/``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from common.config import load_federation
from common.tasks import get_task
from server.ops.simulate import ensure_data, simulate

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def variant(base: dict, *, work: Path, data_dir: Path, sigma: float | None, clip: float) -> Path:
    config = {**base, "name": f"central-dp-{sigma if sigma is not None else 'off'}",
              "output_dir": str(work / f"sigma-{sigma}"), "data_dir": str(data_dir)}
    aggregation = dict(config.get("aggregation") or {})
    aggregation.pop("central_dp", None)
    if sigma is not None:
        aggregation["central_dp"] = {"noise_multiplier": sigma, "clip": clip}
    config["aggregation"] = aggregation
    path = work / f"sigma-{sigma}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=None, help="default: the demo's")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="helixfed-central-dp-"))
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(DEMO.read_text())
    data_dir = ensure_data(load_federation(DEMO))  # every setting trains on the same generated data
    rows = []
    for sigma in (None, *args.sigmas):
        started = time.monotonic()
        history = simulate(variant(base, work=work, data_dir=data_dir, sigma=sigma, clip=args.clip),
                           rounds=args.rounds, fresh=True, timeout=3600)
        last = history[-1]
        headline = {task: metrics.get(get_task(task).headline_metric) for task, metrics in last.central.items()}
        clipped = sum(len(line.central_dp.get("clipped", [])) for line in history)
        rows.append((sigma, headline, last.central_dp.get("epsilon"), clipped, time.monotonic() - started,
                     len(history) - 1))
    tasks = list(rows[0][1])
    print(f"# Institution-level DP at the server: utility (demo federation, clip C = {args.clip:g}, "
          f"{rows[0][5]} rounds)\n")
    print("Each institution also keeps its own record-level DP (its ledger), as in every demo run. "
          "Institution-level ε: RDP, every institution in every round, δ = 1e-5.\n")
    print("| central_dp σ | " + " | ".join(f"{t} ({get_task(t).headline_metric})" for t in tasks)
          + " | institution-level ε | clipped institution-rounds | wall s |")
    print("|---|" + "---|" * (len(tasks) + 3))
    for sigma, headline, epsilon, clipped, seconds, _ in rows:
        cells = " | ".join("–" if headline[t] is None else f"{headline[t]:.3f}" for t in tasks)
        eps = "–" if epsilon is None else f"{epsilon:.2f}"
        print(f"| {'off' if sigma is None else f'{sigma:g}'} | {cells} | {eps} | {clipped} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
