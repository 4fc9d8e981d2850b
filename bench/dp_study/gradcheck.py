"""Step 2: are Opacus per-sample gradients / the clipped mean right on a TRAINED demo model, as
client/trainer.py wraps it (hooks, wrap_model=False, backbone + one head trainable)?"""
import copy
import json
import warnings

import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")
from harness import DEMO, load  # noqa: E402
from opacus import PrivacyEngine  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from client import trainer  # noqa: E402
from common.config import TrainingConfig  # noqa: E402
from common.data.dataset import collate  # noqa: E402
from common.model import GenomicTransformer, ModelConfig, parameters_for_task  # noqa: E402
from common.tasks import task_loss  # noqa: E402

print("trainer from", trainer.__file__)
torch.manual_seed(0)
model = GenomicTransformer(ModelConfig(**DEMO), tasks=("promoter", "enhancer"))
data = {t: load(t) for t in ("promoter", "enhancer")}
# ~300 non-DP steps (batch 64, Adam 1e-3) through the project's own plain trainer
tc = TrainingConfig(local_epochs=2.0, batch_size=64, max_physical_batch_size=64, learning_rate=1e-3)
r = trainer.train_task_plain(model, data["promoter"]["train"], training=tc, device=torch.device("cpu"))
print("plain training:", r.steps, "steps, mean loss", round(r.mean_loss, 4))
# one short DP call on the OTHER task first, to exercise head toggling + cleanup (stale state check)
tc2 = TrainingConfig(local_epochs=0.1, batch_size=256, max_physical_batch_size=128, learning_rate=1e-3)
trainer.train_task_dp(model, data["enhancer"]["train"], training=tc2, noise_multiplier=1.0, max_grad_norm=1.0,
                      accountant="rdp", device=torch.device("cpu"))
stale = {
    "requires_grad_all_true": all(p.requires_grad for p in model.parameters()),
    "params_with_grad_sample": [n for n, p in model.named_parameters() if getattr(p, "grad_sample", None) is not None],
    "params_with_summed_grad": [n for n, p in model.named_parameters() if getattr(p, "summed_grad", None) is not None],
    "modules_with_activations": [n for n, m in model.named_modules() if hasattr(m, "activations")],
    "modules_with_hooks": [n for n, m in model.named_modules() if m._forward_hooks or m._backward_hooks],
}
print("stale state after train_task_dp:", json.dumps(stale))

task = "promoter"
B = 16
ds = Subset(data[task]["train"], list(range(B)))
tokens, labels = collate([ds[i] for i in range(B)])
trained = copy.deepcopy(model)

# reference: per-example autograd on a plain copy, same trainable set as the trainer uses
ref_model = copy.deepcopy(trained)
trainer._set_trainable(ref_model, task)
names = [n for n, p in ref_model.named_parameters() if p.requires_grad]
ref = {n: [] for n in names}
for i in range(B):
    ref_model.zero_grad(set_to_none=True)
    loss = task_loss(task, ref_model(tokens[i:i + 1], task).logits, labels[i:i + 1])
    loss.backward()
    for n, p in ref_model.named_parameters():
        if p.requires_grad:
            ref[n].append(p.grad.detach().clone())
ref = {n: torch.stack(v) for n, v in ref.items()}
ref_norms = torch.stack([ref[n].reshape(B, -1).norm(dim=1) for n in names], 1).norm(dim=1)
C = float(ref_norms.median())
clip = (C / (ref_norms + 1e-6)).clamp(max=1.0)
ref_clipped_mean = {n: torch.einsum("i,i...", clip, ref[n]) / B for n in names}

# Opacus, wrapped exactly as client/trainer.py does (noise 0, C = median norm, SGD lr 0)
dp_model = copy.deepcopy(trained)
trainer._set_trainable(dp_model, task)
opt = torch.optim.SGD(parameters_for_task(dp_model, task), lr=0.0)
loader = DataLoader(ds, batch_size=B, collate_fn=collate)
engine = PrivacyEngine(accountant="rdp")
hooks, dpopt, dl = engine.make_private(module=dp_model, optimizer=opt, data_loader=loader, noise_multiplier=0.0,
                                       max_grad_norm=C, poisson_sampling=False, grad_sample_mode="hooks",
                                       wrap_model=False)
dpopt.zero_grad(set_to_none=True)
loss = task_loss(task, dp_model(tokens, task).logits, labels)  # the trainer's loss (mean over batch)
loss.backward()
gs = {n: p.grad_sample.detach().clone() for n, p in dp_model.named_parameters() if p.requires_grad}
dpopt.step()
rows = []
worst_abs = worst_rel = worst_abs_c = worst_rel_c = 0.0
for n in names:
    a = (gs[n] - ref[n]).abs().max().item()
    rel = a / max(ref[n].abs().max().item(), 1e-12)
    p = dict(dp_model.named_parameters())[n]
    ac = (p.grad - ref_clipped_mean[n]).abs().max().item()
    relc = ac / max(ref_clipped_mean[n].abs().max().item(), 1e-12)
    worst_abs, worst_rel, worst_abs_c, worst_rel_c = max(worst_abs, a), max(worst_rel, rel), max(worst_abs_c, ac), max(worst_rel_c, relc)
    rows.append((n, tuple(ref[n].shape[1:]), a, rel, ac, relc))
for r in rows:
    print(f"{r[0]:42s} {str(r[1]):14s} per-sample abs {r[2]:.2e} rel {r[3]:.2e} | clipped-mean abs {r[4]:.2e} rel {r[5]:.2e}")
print(json.dumps(dict(n_params=len(names), C=C, ref_norm_quantiles=torch.quantile(ref_norms, torch.tensor([0., .5, 1.])).tolist(),
                      max_abs_per_sample=worst_abs, max_rel_per_sample=worst_rel,
                      max_abs_clipped_mean=worst_abs_c, max_rel_clipped_mean=worst_rel_c)))
# per-component share of the squared per-sample norm (which layers dominate)
share = {}
for n in names:
    key = n.split(".")[0] + ("." + n.split(".")[1] if n.startswith(("embedding", "heads", "blocks")) else "")
    share[key] = share.get(key, 0) + (ref[n].reshape(B, -1).norm(dim=1) ** 2).mean().item()
tot = sum(share.values())
print("mean squared-norm share:", json.dumps({k: round(v / tot, 3) for k, v in share.items()}))
hooks.cleanup()
