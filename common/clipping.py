"""Per-sample clipping for Opacus' DP-SGD beyond its flat clipping, shared by the institutions' trainer
(client/trainer.py) and the DP k-mer baseline (common/analysis/dp_baselines.py).

Used through :meth:`ClippingOptimizer.take_over` on the optimizer ``PrivacyEngine.make_private`` returns
(only ``clip_and_accumulate`` differs), then setting ``record_weights`` per physical batch where wanted.
Every variant keeps each record's contribution within ``max_grad_norm``, so the noise Opacus adds and its
accountant are unchanged.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer


class ClippingOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with automatic clipping as an option (Bu et al. 2023: every per-sample
    gradient scaled by C / (norm + 0.01), so each contributes at most C, as with flat clipping),
    per-record weights in (0, 1] applied after clipping (``record_weights``, set before each physical
    batch's step: a weighted record still contributes at most C), and a record of the per-sample
    norms it saw (an institution keeps them in its own log only)."""

    automatic: bool = False
    norm_log: list[torch.Tensor]
    record_weights: torch.Tensor | None = None

    @classmethod
    def take_over(cls, optimizer: DPOptimizer, *, automatic: bool = False) -> ClippingOptimizer:
        """``optimizer`` (from ``make_private``, hooks mode) as a ClippingOptimizer: the same object and
        state, with this class's ``clip_and_accumulate`` and an empty norm log."""
        optimizer.__class__ = cls
        optimizer.automatic, optimizer.norm_log, optimizer.record_weights = automatic, [], None
        return optimizer

    def clip_and_accumulate(self) -> None:
        if not len(self.grad_samples[0]):  # an empty Poisson batch: noise only
            return super().clip_and_accumulate()
        per_param = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in self.grad_samples], dim=1)
        norms = per_param.norm(2, dim=1)  # [B]
        self.norm_log.append(norms.detach().cpu())
        if not self.automatic and self.record_weights is None:
            return super().clip_and_accumulate()
        if self.automatic:
            factor = (self.max_grad_norm / (norms + 0.01)).to(norms.dtype)
        else:  # Opacus' flat clipping factor
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0).to(norms.dtype)
        if self.record_weights is not None:
            weights = self.record_weights
            if weights.shape != factor.shape or not bool(((weights >= 0.0) & (weights <= 1.0)).all()):
                raise RuntimeError(f"record weights {tuple(weights.shape)} for a batch of {len(factor)}: "
                                   f"expected one weight in [0, 1] per record (a record's share of C)")
            factor = factor * weights.to(factor.device, factor.dtype)
        for p in self.params:
            grad = torch.einsum("i,i...", factor, p.grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
        return None
