"""Is the model worth federating? Every task's test metric for the classic baselines, the DP k-mer
baseline, centralized non-DP training and a federation of institutions under DP, in one table.

    .venv/bin/python bench/dp_recipe.py --data DIR --tasks promoter coding [--institutions 3]
        [--rounds 6] [--epsilons 8 3] [--config configs/demo.yaml] [--init-checkpoint CKPT]
        [--variants scratch/all pretrained/all pretrained/heads pretrained/lora] [--out FILE.md]
        [--centralized-epochs N] [--skip-centralized | --skip-federated] [--local-epochs E] [--learning-rate LR]
        [--model KEY=VALUE ...] [--training KEY=VALUE ...] [--metric auroc] [--positive-fraction 0.2]
        [--parts] [--accountant rdp|prv] [--max-grad-norm C] [--tail-average M ...]

DIR holds ``<task>/{train,val,test}.tsv`` (a real set from bench/real_data/build_real_sets.py, or one
institution's generated data). The training split is dealt at random into ``--institutions``
equal shares (one per institution, same species); each institution trains under its own ledger
with ``planned_rounds = --rounds`` at each ε (δ 1e-5), through the project's own agent, trainer,
ledger and aggregation (``InstitutionAgent.train`` -> ``server.aggregation.aggregate``), in one
process: Flower only carries these messages and adds nothing to quality. The baselines:

* k-mer: the classic logistic regression on the pooled training split, no privacy (the bar);
* DP k-mer (one site): the same features trained with DP-SGD at the same ε on ONE institution's
  share: what an institution gets alone under its budget;
* centralized: the transformer trained without DP on the pooled split for as many epochs as the
  federation's rounds x local epochs.

Variants: ``scratch/all`` (random init, every parameter), ``pretrained/<mode>`` (from
``--init-checkpoint``, training ``all``, ``heads`` or ``lora`` parameters; ``lora`` needs the
config's ``model.lora_rank``, set to 8 here if 0). Scored on the test split.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.agent import InstitutionAgent  # noqa: E402
from common.analysis.baselines import run_baseline  # noqa: E402
from common.analysis.dp_baselines import DPSettings, run_dp_baseline  # noqa: E402
from common.checkpoint import start_from  # noqa: E402
from common.config import InstitutionConfig, PrivacyConfig, TrainingConfig, load_federation, parse_config  # noqa: E402
from common.data.dataset import GenomicDataset, Record  # noqa: E402
from common.data.readers import load_dataset  # noqa: E402
from common.data.writers import write_split_tables  # noqa: E402
from common.evaluation import evaluate  # noqa: E402
from common.metrics import metric_keys  # noqa: E402
from common.model import GenomicTransformer  # noqa: E402
from common.tasks import get_task  # noqa: E402
from server.aggregation import Update, aggregate  # noqa: E402

DEFAULT_VARIANTS = ("scratch/all",)


def records_of(dataset: GenomicDataset) -> list[Record]:
    return [dataset.record(i) for i in range(len(dataset))]


def deal(datasets: dict[str, GenomicDataset], k: int, seed: int) -> list[dict[str, list[Record]]]:
    """Each task's training records shuffled and dealt into ``k`` equal shares."""
    shares: list[dict[str, list[Record]]] = [{} for _ in range(k)]
    for task, data in datasets.items():
        records = records_of(data)
        random.Random(seed).shuffle(records)
        for i in range(k):
            shares[i][task] = records[i::k]
    return shares


def with_positive_fraction(dataset: GenomicDataset, fraction: float, *, seed: int, max_len: int) -> GenomicDataset:
    """Every negative (label 0) and a random subset of the positives (label 1), so that positives are
    ``fraction`` of the records: an imbalanced binary task made from a balanced generated one."""
    records = records_of(dataset)
    if dataset.task.per_position or dataset.task.num_classes != 2:
        raise SystemExit(f"--positive-fraction: {dataset.task.name} is not a binary sequence task")
    negatives = [r for r in records if r.label == 0]
    positives = [r for r in records if r.label == 1]
    keep = round(len(negatives) * fraction / (1.0 - fraction))
    if keep > len(positives):
        raise SystemExit(f"--positive-fraction {fraction}: {dataset.task.name} has {len(positives)} positives, "
                         f"needs {keep}")
    kept = negatives + random.Random(seed).sample(positives, keep)
    random.Random(seed + 1).shuffle(kept)
    return GenomicDataset(kept, task=dataset.task.name, max_len=max_len)


def head(task: str, metrics: dict, metric: str | None = None) -> float:
    """The table's cell: ``metric`` (``--metric``, e.g. ``auroc`` to tell a ranking gap from a
    threshold one under MCC), else the task's headline metric."""
    return float(metrics[metric or get_task(task).headline_metric])


def scores_by_part(model: GenomicTransformer, test: dict) -> dict[str, dict[str, dict]]:
    """Which part of a sequence head carries it: for every sequence task with a k-mer path, the test
    metrics of its network alone (the path's logits set to zero) and of its path alone (the network's
    output replaced by its last bias, which holds the head's threshold)."""
    parts = {}
    for task, data in test.items():
        head_module = model.heads[task]
        if getattr(head_module, "kmers", None) is None or get_task(task).per_position:
            continue
        silence_path = head_module.kmers.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
        network_alone = evaluate(model, data, batch_size=128)
        silence_path.remove()
        silence_network = head_module.mlp.register_forward_hook(lambda m, _i, out: m[-1].bias.expand_as(out))
        path_alone = evaluate(model, data, batch_size=128)
        silence_network.remove()
        parts[task] = {"network alone": network_alone, "path alone": path_alone}
    return parts


def federate(config, shares, test, *, epsilon, rounds, variant, init_checkpoint, work: Path,
             metric: str | None = None, parts: bool = False, accountant: str = "rdp",
             max_grad_norm: float = 1.0, tail_average: tuple[int, ...] = ()) -> dict[str, float]:
    """``rounds`` rounds of the institutions' DP training and FedAvg; the final model's test metrics.
    ``tail_average``: also print each round's test metrics and those of the mean of the last m rounds'
    global models for each m (post-processing of what every institution already received)."""
    start, mode = variant.split("/")
    model_config = config.model
    if mode == "lora" and not model_config.lora_rank:
        model_config = type(model_config)(**{**model_config.to_dict(), "lora_rank": 8})
    training = config.training.model_copy(update={"trainable": mode})
    tasks = tuple(test)
    torch.manual_seed(config.seed)
    model = GenomicTransformer(model_config, tasks=tasks)
    if start == "pretrained":
        start_from(model, init_checkpoint)
    agents = []
    for i, share in enumerate(shares):
        data_dir = work / f"site-{i}"
        for task, records in share.items():
            write_split_tables(data_dir / task, {"train": records, "test": records[:10]})
        privacy = PrivacyConfig(epsilon=epsilon, delta=1e-5, planned_rounds=rounds, accountant=accountant,
                                max_grad_norm=max_grad_norm)
        institution = InstitutionConfig(name=f"site-{i}", species="human", tasks=tasks, data_dir=data_dir,
                                        state_dir=work / f"state-{i}-{variant.replace('/', '-')}-{epsilon}",
                                        device="cpu", privacy=privacy)
        agents.append(InstitutionAgent(institution, federation_training=training))
    history: list[dict[str, torch.Tensor]] = []
    for r in range(1, rounds + 1):
        previous = {k: v.numpy() for k, v in model.state_dict().items()}
        updates = []
        for agent in agents:
            local = GenomicTransformer(model_config, tasks=tasks)
            local.load_state_dict(model.state_dict())
            outcome = agent.train(local, run_id=f"bench-{variant}-{epsilon}", server_round=r, num_rounds=rounds)
            if outcome.weights is not None:
                updates.append(Update(agent.config.name, "human", {k: v.numpy() for k, v in outcome.weights.items()},
                                      outcome.examples))
        weights, _ = aggregate(updates, previous)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        if tail_average:
            history.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            scored = {task: round(head(task, evaluate(model, data, batch_size=128), metric), 3) for task, data in test.items()}
            print(f"ε={epsilon:g} {variant} round {r}: {scored}", flush=True)
    for m in tail_average:
        averaged = GenomicTransformer(model_config, tasks=tasks)
        averaged.load_state_dict({k: torch.stack([h[k] for h in history[-m:]]).mean(0) if v.is_floating_point() else v
                                  for k, v in model.state_dict().items()})
        scored = {task: evaluate(averaged, data, batch_size=128) for task, data in test.items()}
        print(f"ε={epsilon:g} {variant} mean of the last {m} rounds' models: "
              + str({task: round(head(task, s, metric), 3) for task, s in scored.items()}), flush=True)
    epsilon_spent = max(agent.epsilon() for agent in agents)
    metrics = {task: evaluate(model, data, batch_size=128) for task, data in test.items()}
    print(f"ε={epsilon:g} {variant}: every test metric {metrics}", flush=True)
    for task, scored in (scores_by_part(model, test) if parts else {}).items():
        shown = [key for key in (get_task(task).headline_metric, "auroc") if key in metrics[task]]
        print(f"ε={epsilon:g} {variant} {task}: " + "; ".join(
            f"{name} " + " ".join(f"{key} {m[key]:.3f}" for key in shown) for name, m in scored.items()), flush=True)
    return {**{task: head(task, m, metric) for task, m in metrics.items()}, "epsilon": epsilon_spent}


def centralized(config, train, test, *, epochs: int, metric: str | None = None) -> dict[str, float]:
    from client.trainer import seed_everything, train_round

    torch.manual_seed(config.seed)
    model = GenomicTransformer(config.model, tasks=tuple(test))
    training = config.training.model_copy(update={"local_epochs": 1.0})
    for epoch in range(1, epochs + 1):
        seed_everything(training.seed + epoch)
        train_round(model, train, training=training, dp=False, noise_multiplier=0.0, max_grad_norm=1.0,
                    accountant="rdp", device=torch.device("cpu"), progress=((epoch - 1) / epochs, epoch / epochs))
    return {task: head(task, evaluate(model, data, batch_size=128), metric) for task, data in test.items()}


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` -> ``{key: value}``, each value read as YAML (numbers, lists, mappings)."""
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--institutions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--init-checkpoint", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--max-train", type=int, default=None, help="cap each task's training records")
    parser.add_argument("--local-epochs", type=float, default=None, help="override training.local_epochs")
    parser.add_argument("--learning-rate", type=float, default=None, help="override training.learning_rate")
    parser.add_argument("--model", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override model settings of --config, e.g. kmer_linear=4")
    parser.add_argument("--training", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override training settings of --config, e.g. lr_schedule=cosine ema_decay=0.9")
    parser.add_argument("--skip-centralized", action="store_true")
    parser.add_argument("--centralized-epochs", type=int, default=None,
                        help="epochs of the centralized run (default: the federation's rounds x local epochs)")
    parser.add_argument("--skip-federated", action="store_true", help="baselines and centralized only")
    parser.add_argument("--metric", default=None,
                        help="report this metric (e.g. auroc, auprc) instead of each task's headline metric")
    parser.add_argument("--positive-fraction", type=float, default=None,
                        help="keep every negative and this fraction of positives in train and test (binary tasks)")
    parser.add_argument("--parts", action="store_true",
                        help="also score each sequence head's network alone and k-mer path alone")
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp",
                        help="every institution's accountant (σ is planned with it)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0,
                        help="every institution's clipping norm C (privacy.max_grad_norm)")
    parser.add_argument("--tail-average", type=int, nargs="+", default=[], metavar="M",
                        help="also score every round and the mean of the last M rounds' global models")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    metric = args.metric
    if not 0 < args.max_grad_norm < float("inf"):  # named now, not after the baselines ran
        parser.error(f"--max-grad-norm: the clipping norm must be finite and > 0, got {args.max_grad_norm}")
    if any(not 1 <= m <= args.rounds for m in args.tail_average):
        parser.error(f"--tail-average: each M must be 1..{args.rounds} (--rounds), got {args.tail_average}")
    for task in args.tasks if metric else ():  # a typo is named now, not as a KeyError after the runs
        if metric not in (keys := metric_keys(get_task(task))):
            parser.error(f"--metric: {task} has no metric {metric!r}; it has {', '.join(keys)}")
    torch.set_num_threads(1)
    config = load_federation(args.config)
    training = {key: getattr(args, key) for key in ("local_epochs", "learning_rate") if getattr(args, key)}
    training.update(parse_overrides(args.training))
    if training:  # validated as the config file's training section is, a bad value named
        config = config.model_copy(update={"training": parse_config(
            {**config.training.model_dump(), **training}, TrainingConfig, source="--training")})
    if args.model:
        model = {**config.model.to_dict(), **parse_overrides(args.model)}
        config = config.model_copy(update={"model": type(config.model).from_dict(model)})
    max_len = config.model.max_len
    train = {t: load_dataset(args.data / t, task=t, split="train", max_len=max_len) for t in args.tasks}
    test = {t: load_dataset(args.data / t, task=t, split="test", max_len=max_len) for t in args.tasks}
    if args.positive_fraction is not None:
        train = {t: with_positive_fraction(d, args.positive_fraction, seed=1, max_len=max_len) for t, d in train.items()}
        test = {t: with_positive_fraction(d, args.positive_fraction, seed=2, max_len=max_len) for t, d in test.items()}
    if args.max_train:
        train = {t: GenomicDataset(records_of(d)[: args.max_train], task=t, max_len=max_len) for t, d in train.items()}
    shares = deal(train, args.institutions, seed=0)
    rows: dict[str, dict[str, float]] = {}
    started = time.monotonic()
    rows["k-mer (pooled, no DP)"] = {t: head(t, run_baseline(train[t], test[t], task=t, method="kmer"), metric) for t in args.tasks}
    for eps in args.epsilons:
        one_site = {t: GenomicDataset(shares[0][t], task=t, max_len=max_len) for t in args.tasks}
        rows[f"DP k-mer, one site, ε={eps:g}"] = {
            t: head(t, run_dp_baseline(one_site[t], test[t], task=t, settings=DPSettings(epsilon=eps)), metric)
            for t in args.tasks}
    print(rows, flush=True)
    epochs = args.centralized_epochs or max(1, round(args.rounds * config.training.local_epochs))
    if not args.skip_centralized:
        rows[f"transformer centralized, no DP ({epochs} epochs)"] = centralized(config, train, test, epochs=epochs, metric=metric)
        print(rows, flush=True)
    with tempfile.TemporaryDirectory(prefix="dp-recipe-") as work:
        for variant in [] if args.skip_federated else args.variants:
            for eps in args.epsilons:
                scores = federate(config, shares, test, epsilon=eps, rounds=args.rounds, variant=variant,
                                  init_checkpoint=args.init_checkpoint, work=Path(work), metric=metric,
                                  parts=args.parts, accountant=args.accountant,
                                  max_grad_norm=args.max_grad_norm, tail_average=tuple(args.tail_average))
                rows[f"federated {args.institutions} sites, {variant}, ε={eps:g} (spent {scores.pop('epsilon'):.2f})"] = scores
                print(variant, eps, scores, f"{time.monotonic() - started:.0f}s", flush=True)
    table = ["| model | " + " | ".join(args.tasks) + " |", "|---|" + "---|" * len(args.tasks)]
    table += [f"| {name} | " + " | ".join(f"{s[t]:.3f}" for t in args.tasks) + " |" for name, s in rows.items()]
    text = "\n".join(table)
    print(text)
    if args.out:
        header = (f"# dp_recipe: {args.data}\n\n`{' '.join(sys.argv[1:])}`\n\n{args.institutions} institutions, "
                  f"{args.rounds} rounds, config {args.config.name} {' '.join(args.model + args.training)}; train {[len(d) for d in train.values()]}, "
                  f"test {[len(d) for d in test.values()]}; {time.monotonic() - started:.0f} s\n\n")
        args.out.write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
