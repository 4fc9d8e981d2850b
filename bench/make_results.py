"""Assemble bench/RESULTS.md from the per-script records in bench/results/ (written by
bench/run_all.py), in the order the suite runs them, under a short index."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("dp_recipe", "finetuning_modes", "dp_study", "model_step", "dp_overhead", "privacy_audit", "serve_latency", "privacy_utility",
         "species_weighting", "scale", "deploy_overhead", "central_dp", "secure_aggregation", "secure_deployment", "gpu")
TITLES = {"dp_recipe": "Is the model worth federating? Baselines, DP baselines, centralized, federated (issue 12)",
          "finetuning_modes": "From scratch vs pre-trained; all vs heads vs LoRA; variant impact (issue 12.2)",
          "dp_study": "DP recipe study: clipping bias, recipes under noise (issue 12.1)",
          "model_step": "DP vs non-DP training step (issue 2)", "dp_overhead": "DP cost through the trainer, FLOP/s (issues 4, 8.3)",
          "privacy_audit": "Privacy audit: canary exposure, membership inference (issue 8.5)",
          "serve_latency": "Evaluation service latency (issue 7)", "privacy_utility": "Privacy vs utility (issue 8.1)",
          "species_weighting": "Species weighting (issue 8.2)", "scale": "Scale and aggregation throughput (issue 8.4)",
          "deploy_overhead": "Deployment vs simulation round overhead (issue 6)",
          "central_dp": "Institution-level DP at the server: utility (issue 16.2)",
          "secure_aggregation": "Secure aggregation: the cost of a round (issue 16.1)",
          "secure_deployment": "A secure round in deployment, TLS and node authentication (issue 16.1)", "gpu": "GPU (issue 8.6)"}
# Where a record lives when it is not bench/results/<name>.md.
SOURCES = {"dp_study": HERE / "dp_study" / "README.md"}
INTRO = """# Benchmark results

Every number the README quotes comes from one of these records. Each section is the verbatim output of
one script in `bench/`, with the command, date, machine and the machine's load while it ran: these
2-core VMs are shared, so compare ratios measured side by side in one run, not absolute times across
sections. Reproduce everything with `make bench` (CPU suite, about 20 minutes on 2 cores; `bench/run_all.py`
writes `bench/results/*.md`, then `python bench/make_results.py` rebuilds this file). `bench/gpu.sh` is
the GPU script, run on a lent GPU machine only.
"""


def main() -> None:
    parts = [INTRO, "\n## Contents\n"]
    records = {name: SOURCES.get(name, HERE / "results" / f"{name}.md") for name in ORDER}
    present = [name for name in ORDER if records[name].is_file()]
    parts += [f"- [{TITLES[name]}](#{name.replace('_', '-')})" for name in present]
    for name in present:
        body = records[name].read_text().strip()
        body = "\n".join(line for line in body.splitlines() if not line.startswith("<!--"))
        body = body.replace("\n# ", "\n### ").removeprefix("# ")
        parts.append(f"\n<a id=\"{name.replace('_', '-')}\"></a>\n## {TITLES[name]}\n\n{body}\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
