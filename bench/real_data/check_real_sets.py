"""Check the sets build_real_sets.py wrote: they load, and they are learnable but not trivial.

For every ``<root>/<set>/<task>`` directory this loads each split with the project's own reader
(``common.data.readers.load_dataset``, so format errors surface exactly as training would see
them), prints the counts, and fits quick baselines on train, scored on test:

* sequence tasks: logistic regression on 4-6-mer counts (test MCC), and on GC content alone, to
  show how much base composition by itself gives away;
* splice: two logistic regressions on a one-hot +-20 bp context, one over GT candidates (donor),
  one over AG candidates (acceptor); every other base scores 0; per-class PR-AUC over all bases.

Single-threaded on purpose (n_jobs=1): it is a sanity check, not a benchmark.

Usage (from the repository root): python bench/real_data/check_real_sets.py --root /tmp/real_sets
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, matthews_corrcoef
from sklearn.preprocessing import normalize

from common.data.readers import load_dataset

CONTEXT = 20  # bases either side of a splice candidate
ONE_HOT = {c: i for i, c in enumerate("ACGT")}


def load(task_dir: Path, task: str) -> dict:
    splits = {}
    for split in ("train", "val", "test"):
        ds = load_dataset(task_dir, task=task, split=split)
        labels = [lab.numpy() for lab in ds.labels]
        splits[split] = (ds.sequences, labels if task == "splice" else np.array([int(x) for x in labels]))
    return splits


def kmer_mcc(train, test) -> float:
    vec = CountVectorizer(analyzer="char", ngram_range=(4, 6), lowercase=False)
    x_train = normalize(vec.fit_transform(train[0]).astype(np.float32))
    x_test = normalize(vec.transform(test[0]).astype(np.float32))
    model = LogisticRegression(C=1.0, max_iter=2000, solver="liblinear").fit(x_train, train[1])
    return float(matthews_corrcoef(test[1], model.predict(x_test)))


def gc_mcc(train, test) -> float:
    def gc(seqs):
        return np.array([[(s.count("G") + s.count("C")) / len(s)] for s in seqs])
    model = LogisticRegression(max_iter=1000).fit(gc(train[0]), train[1])
    return float(matthews_corrcoef(test[1], model.predict(gc(test[0]))))


def candidates(seq: str, cls: int) -> list[int]:
    """Donor candidates: the base before a GT; acceptor candidates: the G of an AG."""
    if cls == 1:
        return [i for i in range(len(seq) - 2) if seq[i + 1:i + 3] == "GT"]
    return [i for i in range(1, len(seq)) if seq[i - 1:i + 1] == "AG"]


def context(seq: str, i: int) -> np.ndarray:
    row = np.zeros((2 * CONTEXT + 1, 4), dtype=np.float32)
    for j in range(-CONTEXT, CONTEXT + 1):
        if 0 <= i + j < len(seq) and seq[i + j] in ONE_HOT:
            row[j + CONTEXT, ONE_HOT[seq[i + j]]] = 1.0
    return row.ravel()


def candidate_table(seqs, labels, cls: int, rng, keep_negative: float = 1.0):
    xs, ys, where = [], [], []
    for n, (seq, lab) in enumerate(zip(seqs, labels, strict=True)):
        for i in candidates(seq, cls):
            positive = lab[i] == cls
            if positive or rng.random() < keep_negative:
                xs.append(context(seq, i))
                ys.append(int(positive))
                where.append((n, i))
    return np.array(xs), np.array(ys), where


def splice_pr_auc(train, test) -> dict[str, float]:
    rng = np.random.default_rng(0)
    truth = np.concatenate(test[1])
    offsets = np.cumsum([0] + [len(s) for s in test[0]])
    result = {}
    for cls, name in ((1, "donor"), (2, "acceptor")):
        x, y, _ = candidate_table(*train, cls, rng, keep_negative=0.3)  # subsample decoys: memory/time
        model = LogisticRegression(C=0.1, max_iter=2000).fit(x, y)
        x_test, _, where = candidate_table(*test, cls, rng)
        scores = np.zeros(truth.size)
        scores[[offsets[n] + i for n, i in where]] = model.predict_proba(x_test)[:, 1]
        result[name] = float(average_precision_score(truth == cls, scores))
        result[f"{name}_prevalence"] = float((truth == cls).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/real_sets"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = {}
    for task_dir in sorted(p for p in args.root.glob("*/*") if p.is_dir()):
        task = task_dir.name
        splits = load(task_dir, task)
        entry = {"counts": {s: len(v[0]) for s, v in splits.items()}}
        if task == "splice":
            entry["pr_auc"] = splice_pr_auc(splits["train"], splits["test"])
        else:
            entry["positives"] = {s: int(v[1].sum()) for s, v in splits.items()}
            entry["kmer_4_6_test_mcc"] = round(kmer_mcc(splits["train"], splits["test"]), 3)
            entry["gc_only_test_mcc"] = round(gc_mcc(splits["train"], splits["test"]), 3)
        key = f"{task_dir.parent.name}/{task}"
        results[key] = entry
        print(key, json.dumps(entry), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
