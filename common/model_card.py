"""Model cards: the ``README.md`` every checkpoint carries (Hugging Face style).

A card says what the model is for, how it was trained and what its privacy guarantee is, using
only what the checkpoint's writer knows: a federation's card lists tasks, each institution's species,
records per task, rounds trained and the ε, δ and accountant from its ledger as it reported them,
the central metrics with the k-mer baselines when the report computed them; a local or pre-training
checkpoint's card says what its state records. Numbers are copied from the metrics history, never
recomputed, so the card's ε is the ledgers' (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from common.model import ModelConfig
from common.protocol import RoundMetrics, institution_summaries
from common.tasks import get_task

INTENDED_USE = (
    "Research on the tasks above: scoring DNA windows of the lengths trained on, for the species "
    "listed. Not a diagnostic device. Generated (simulated) data trains models that say nothing about "
    "real biology. Predictions outside the training species and lengths are extrapolation.")


def _front_matter(tasks: Sequence[str], species: Sequence[str]) -> list[str]:
    tags = ["helixfed", "genomics", "dna", "differential-privacy", "federated-learning"]
    return ["---", "library_name: helixfed", f"tags: [{', '.join(tags)}]",
            f"tasks: [{', '.join(tasks)}]", f"species: [{', '.join(species)}]", "---", ""]


def _kmer_paths(c: ModelConfig) -> str:
    def path(task: str | None, k: int) -> str:
        strands = c.applies("kmer_both_strands", task)  # task None: the shared value
        norm, bound = c.kmer_norm_of(task), c.kmer_logit_bound_of(task)
        return (f"{task + ': ' if task else ''}k = 1..{k}{', both strands' if strands else ''}"
                f"{f', scaled to L2 norm {norm:g}' if norm else ''}"
                f"{f', logits bounded by ±{bound:g} (tanh)' if bound else ''}")

    if isinstance(c.kmer_linear, dict):
        return "linear k-mer paths (" + "; ".join(path(t, k) for t, k in c.kmer_linear.items() if k) + ")"
    per_task = ("kmer_both_strands", "kmer_norm", "kmer_logit_bound")
    if any(c.named_tasks(option) for option in per_task):  # one k, per-task options
        tasks = sorted({t for option in per_task for t in c.named_tasks(option)})
        return f"linear k-mer paths ({path(None, c.kmer_linear)}; " + "; ".join(path(t, c.kmer_linear) for t in tasks) + ")"
    return f"linear k-mer paths ({path(None, c.kmer_linear)})"


def _architecture(model_config: ModelConfig) -> str:
    c = model_config
    extras = [_kmer_paths(c) if c.kmer_linear else "",
              ("in-frame codon paths" + (f" ({', '.join(c.codon_frames)})" if isinstance(c.codon_frames, tuple) else ""))
              if c.codon_frames else "",
              f"LoRA rank {c.lora_rank}" if c.lora_rank else ""]
    extra = "; ".join(e for e in extras if e)
    return (f"GenomicTransformer: d_model {c.d_model}, {c.n_layers} layer{'s' * (c.n_layers != 1)}, "
            f"{c.n_heads} attention heads, d_ff {c.d_ff}, "
            f"max length {c.max_len}{'; ' + extra if extra else ''}")


def _usage(tasks: Sequence[str]) -> list[str]:
    return ["## How to use", "", "```python", "from common.analysis.scoring import predict_sequences",
            "from common.model import GenomicTransformer", "",
            "model = GenomicTransformer.from_pretrained(\"path/to/this/directory\")",
            f"probabilities = predict_sequences(model, sequences=[\"ACGT...\"], task=\"{tasks[0]}\")", "```", "",
            "or `helixfed serve --checkpoint DIR --port 50051` (refuses a non-DP model unless --allow-non-dp).", ""]


def basic_card(*, model_config: ModelConfig, tasks: tuple[str, ...], round: int, state: Mapping) -> str:
    """A card for a checkpoint written outside a federation run (local training, pre-training)."""
    local, pretraining = state.get("local_training"), state.get("pretraining")
    if isinstance(local, Mapping):
        how = (f"Trained locally by one institution ({local.get('institution', 'unnamed')}) "
               + (f"with DP-SGD: ε = {local.get('epsilon')} at δ = {local.get('delta')} ({local.get('accountant')})."
                  if local.get("dp") else "WITHOUT differential privacy: it must not leave the institution."))
    elif isinstance(pretraining, Mapping):
        how = ("Pre-trained without DP on public sequence only (self-supervised masked-base prediction); "
               "fine-tune it under DP on private data.")
    else:
        how = "Written by a helixfed run; see checkpoint.json for its provenance."
    lines = [*_front_matter(tasks, ()), "# helixfed genomic transformer", "", how, "",
             f"- Tasks: {', '.join(tasks)}", f"- Architecture: {_architecture(model_config)}", f"- Round/step: {round}", "",
             "## Intended use and limits", "", INTENDED_USE, "", *_usage(tasks)]
    return "\n".join(lines) + "\n"


def _institution_rows(history: Sequence[RoundMetrics]) -> list[str]:
    rows = ["| institution | species | records per task (last round trained) | rounds trained | ε spent | δ | "
            "budget | accountant |", "|---|---|---|---|---|---|---|---|"]
    for name, s in institution_summaries(history).items():
        records = ", ".join(f"{task} {n}" for task, n in sorted(s.examples.items())) or "–"
        rows.append(f"| {name} | {s.species} | {records} | {s.rounds_trained} | "
                    f"{'–' if s.epsilon is None else f'{s.epsilon:.4f}'} | {'–' if s.delta is None else s.delta} | "
                    f"{'–' if s.budget is None else s.budget} | {s.accountant or '–'} |")
    return rows


def _metric_rows(history: Sequence[RoundMetrics], baseline: Mapping | None, dp_baseline: Mapping | None) -> list[str]:
    last = history[-1]
    rows = ["| task | species | metric | this model | k-mer baseline | k-mer baseline under DP |",
            "|---|---|---|---|---|---|"]

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) else "–"
    for task, metrics in last.central.items():
        key = get_task(task).headline_metric
        groups = [("all", metrics), *metrics.get("species", {}).items()]
        for species, values in groups:
            rows.append(f"| {task} | {species} | {key} | {cell(values.get(key))} | "
                        f"{cell((baseline or {}).get(task, {}).get(species))} | "
                        f"{cell((dp_baseline or {}).get(task, {}).get(species))} |")
    return rows


def federation_card(*, name: str, model_config: ModelConfig, tasks: tuple[str, ...], history: Sequence[RoundMetrics],
                    privacy: Mapping, training: str, baseline: Mapping | None = None,
                    dp_baseline: Mapping | None = None) -> str:
    """The card of a federation's checkpoint (every round's and ``final/``)."""
    species = sorted({r.species for line in history for r in line.institutions.values()})
    rounds = history[-1].round if history else 0
    dp = privacy.get("dp")
    guarantee = ("Every update averaged into it was trained with DP-SGD under its institution's own budget "
                 "(record-level DP per institution, from a start that was DP or public)." if dp else
                 "NOT every update was trained under DP: this model carries no privacy guarantee." if dp is False
                 else "No institution has trained it yet.")
    central = history[-1].central_dp if history else {}
    if central:
        guarantee += (f" On top, the server added institution-level DP (updates clipped to {central['clip']:g}, noise "
                      f"multiplier {central['noise_multiplier']:g}): ε = {central['epsilon']:.3f} at δ = "
                      f"{central['delta']:g} for the content of any one institution's updates.")
    baselines_note = ("" if baseline else
                      "Baselines are computed with the final report (`report.md`); this card has none.")
    lines = [*_front_matter(tasks, species), f"# helixfed federation `{name}`: genomic transformer", "",
             f"Trained by {len({n for line in history for n in line.institutions})} institutions over {rounds} "
             f"rounds of federated averaging. {guarantee}", "",
             "## Model", "", f"- Tasks: {', '.join(tasks)}", f"- Architecture: {_architecture(model_config)}",
             f"- Training: {training}", "",
             "## Institutions and privacy spent", "",
             "ε is each institution's cumulative spend as its own ledger reported it (record-level (ε, δ)-DP, "
             "for that institution's records), not a federation-wide guarantee.", "", *_institution_rows(history), "",
             f"## Central evaluation (round {rounds}, the server's held-out set)", "",
             *(_metric_rows(history, baseline, dp_baseline) if history else ["No evaluation yet."]), "",
             *([baselines_note, ""] if baselines_note else []),
             "## Intended use and limits", "", INTENDED_USE,
             "The species weights and record counts come from the institutions and are trusted.", "",
             *_usage(tasks)]
    return "\n".join(lines) + "\n"
