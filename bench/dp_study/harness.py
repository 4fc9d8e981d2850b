"""Study harness: one DP(-ish) training run of the demo model on one binary task, with logging.

Same pipeline for every arm (Opacus hooks, wrap_model=False, Poisson sampling), so arms differ only
in the knobs given. Run: python study/harness.py '{"task": "promoter", ...}'  -> one JSON line.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

from opacus import PrivacyEngine  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402
from sklearn.metrics import matthews_corrcoef  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from common.data.dataset import collate  # noqa: E402
from common.data.readers import load_dataset  # noqa: E402
from common.model import GenomicTransformer, ModelConfig  # noqa: E402
from common.tasks import task_loss  # noqa: E402

DEMO = dict(d_model=48, n_heads=4, n_layers=1, d_ff=96, dropout=0.0, max_len=256, codon_phase=True,
            motif_kernel=9)
ROOT = os.environ.get("DP_STUDY_DATA", "/tmp/dpstudy_data/jackson-lab")  # data synth of fed.yaml

_CACHE: dict = {}


def load(task: str, root: str = ROOT):
    key = (task, root)
    if key not in _CACHE:
        _CACHE[key] = {s: load_dataset(f"{root}/{task}", task=task, split=s) for s in ("train", "val", "test")}
    return _CACHE[key]


class StudyDPOptimizer(DPOptimizer):
    """DPOptimizer whose clipping is 'flat' (Opacus), 'auto' (C/(|g|+gamma), Bu et al.) or 'none'
    (factor 1: no clipping, for noise-0 controls), and which records per-sample norms."""

    clip_kind = "flat"
    gamma = 0.01
    log: list

    def clip_and_accumulate(self):
        if len(self.grad_samples[0]) == 0:
            factor = torch.zeros((0,))
        else:
            per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in self.grad_samples]
            norms = torch.stack(per_param, dim=1).norm(2, dim=1)
            if self.clip_kind == "flat":
                factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            elif self.clip_kind == "auto":
                factor = self.max_grad_norm / (norms + self.gamma)
            elif self.clip_kind == "none":
                factor = torch.ones_like(norms)
            else:
                raise ValueError(self.clip_kind)
            self.log.append(norms.detach().clone())
        for p in self.params:
            gs = self._get_flat_grad_sample(p).to(p.dtype)
            grad = torch.einsum("i,i...", factor.to(p.dtype), gs)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            from opacus.optimizers.optimizer import _mark_as_processed
            _mark_as_processed(p.grad_sample)


def set_trainable(model, freeze: str):
    for name, p in model.named_parameters():
        if freeze == "none":
            p.requires_grad_(True)
        elif freeze == "emb":
            p.requires_grad_(not name.startswith("embedding."))
        elif freeze == "heads_ln":  # heads + every LayerNorm
            p.requires_grad_(name.startswith("heads.") or "norm" in name)
        elif freeze == "heads_ln_stem":
            p.requires_grad_(name.startswith("heads.") or "norm" in name or name.startswith("stem."))
        else:
            raise ValueError(freeze)


@torch.no_grad()
def evaluate(model, ds, task, bs=400):
    model.eval()
    probs, losses, margins = [], [], []
    for i in range(0, len(ds), bs):
        tok, lab = collate([ds[j] for j in range(i, min(len(ds), i + bs))])
        logits = model(tok, task).logits
        losses.append(torch.nn.functional.cross_entropy(logits, lab, reduction="sum").item())
        probs.append(logits.softmax(-1))
        margins.append((logits[:, 1] - logits[:, 0]).abs())
    model.train()
    p = torch.cat(probs).numpy()
    y = ds.label_array()
    evaluate.margin = float(torch.cat(margins).mean())
    return float(matthews_corrcoef(y, p.argmax(1))), float(sum(losses) / len(ds))


def run(cfg: dict) -> dict:
    c = dict(task="promoter", seed=0, epochs=10, batch=256, lr=1e-3, opt="adam", momentum=0.9, wd=0.0,
             clip="flat", C=1.0, gamma=0.01, noise=0.0, eps=None, delta=1e-5, sched="const", ema=0.0,
             freeze="none", root=ROOT, model={}, accountant="rdp", init=None, test=True)
    c.update(cfg)
    t0 = time.time()
    data = load(c["task"], c["root"])
    train, val, test = data["train"], data["val"], data["test"]
    torch.manual_seed(c["seed"])
    model = GenomicTransformer(ModelConfig(**{**DEMO, **c["model"]}), tasks=(c["task"],))
    if c["init"]:
        model.load_state_dict(torch.load(c["init"]))
    model.train()
    set_trainable(model, c["freeze"])
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    if c["opt"] == "adam":
        opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["wd"])
    elif c["opt"] == "sgd":
        opt = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["wd"])
    else:
        raise ValueError(c["opt"])
    g = torch.Generator().manual_seed(1000 + c["seed"])
    loader = DataLoader(train, batch_size=c["batch"], collate_fn=collate, generator=g)
    q = 1.0 / len(loader)
    steps_total = int(round(c["epochs"] / q))
    sigma = c["noise"]
    if c["eps"] is not None:
        sigma = get_noise_multiplier(target_epsilon=c["eps"], target_delta=c["delta"], sample_rate=q,
                                     steps=steps_total, accountant=c["accountant"])
    engine = PrivacyEngine(accountant=c["accountant"])
    hooks, dpopt, dl = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                           noise_multiplier=sigma, max_grad_norm=c["C"],
                                           poisson_sampling=True, grad_sample_mode="hooks", wrap_model=False,
                                           noise_generator=torch.Generator().manual_seed(2000 + c["seed"]))
    dpopt.__class__ = StudyDPOptimizer
    dpopt.clip_kind, dpopt.gamma, dpopt.log = c["clip"], c["gamma"], []
    base_lr = c["lr"]

    def lr_at(step):
        f = step / steps_total
        if c["sched"] == "const":
            return base_lr
        if c["sched"] == "linear":
            return base_lr * (1 - f)
        if c["sched"] == "cosine":
            return base_lr * 0.5 * (1 + math.cos(math.pi * f))
        raise ValueError(c["sched"])

    ema = {n: p.detach().clone() for n, p in model.named_parameters()} if c["ema"] else None
    hist = []
    step = 0
    steps_per_epoch = len(loader)
    while step < steps_total:
        losses = []
        dpopt.log = []
        for tok, lab in dl:
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step)
            dpopt.zero_grad(set_to_none=True)
            logits = model(tok, c["task"]).logits
            loss = task_loss(c["task"], logits, lab) if len(tok) else logits.sum() * 0.0
            loss.backward()
            dpopt.step()
            if len(tok):
                losses.append(loss.item())
            if ema is not None:
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        ema[n].mul_(c["ema"]).add_(p.detach(), alpha=1 - c["ema"])
            step += 1
            if step >= steps_total or step % steps_per_epoch == 0:
                break
        norms = torch.cat(dpopt.log) if dpopt.log else torch.zeros(1)
        qs = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9, 1.0])).tolist()
        rec = dict(ep=round(step / steps_per_epoch, 2), train_loss=float(np.mean(losses)),
                   n10=qs[0], n50=qs[1], n90=qs[2], nmax=qs[3], frac_clip=float((norms > c["C"]).float().mean()))
        rec["val_mcc"], rec["val_loss"] = evaluate(model, val, c["task"])
        rec["val_margin"] = evaluate.margin
        if ema is not None:
            raw = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(ema[n])
            rec["ema_val_mcc"], rec["ema_val_loss"] = evaluate(model, val, c["task"])
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(raw[n])
        hist.append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
    out = dict(cfg=cfg, sigma=sigma, q=q, steps=step, n_trainable=n_trainable,
               eps=engine.get_epsilon(c["delta"]) if sigma > 0 else float("inf"), hist=hist)
    if c["test"]:
        out["test_mcc"], out["test_loss"] = evaluate(model, test, c["task"])
        if ema is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(ema[n])
            out["ema_test_mcc"], out["ema_test_loss"] = evaluate(model, test, c["task"])
    hooks.cleanup()
    out["wall_s"] = round(time.time() - t0, 1)
    return out


if __name__ == "__main__":
    res = run(json.loads(sys.argv[1]))
    print(json.dumps(res))
