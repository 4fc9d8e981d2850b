"""What trains in each mode, LoRA adapters under Opacus, and starting a federation from a checkpoint."""

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from common.checkpoint import CheckpointError, save_checkpoint, start_from
from common.finetuning import LoRALinear, head_of, is_adapter, set_trainable, trainable_names
from common.model import GenomicTransformer, ModelConfig
from common.tasks import task_loss
from common.tokenizer import PAD_ID

TASKS = ("promoter", "splice")


def make(tiny_config, **options):
    torch.manual_seed(0)
    return GenomicTransformer(ModelConfig(**{**tiny_config.to_dict(), **options}), tasks=TASKS)


def test_modes_name_exactly_what_they_train(tiny_config):
    model = make(tiny_config, lora_rank=4)
    names = {n for n, _ in model.named_parameters()}

    everything = trainable_names(model, mode="all", tasks=["promoter"])
    heads = trainable_names(model, mode="heads", tasks=["promoter"])
    lora = trainable_names(model, mode="lora", tasks=["promoter"])

    assert everything == {n for n in names if head_of(n) in (None, "promoter")}
    assert heads == {n for n in names if head_of(n) == "promoter"}
    assert heads < lora < everything
    backbone = lora - heads
    assert all(is_adapter(n) or ".norm" in n or n.startswith("norm.") for n in backbone)
    assert not any(n.startswith(("embedding.", "stem.")) for n in lora)
    assert sum(is_adapter(n) for n in backbone) == 2 * 6 * tiny_config.n_layers  # A and B on 6 Linear per block
    with pytest.raises(ValueError, match="lora_rank > 0"):
        trainable_names(make(tiny_config), mode="lora", tasks=["promoter"])
    with pytest.raises(ValueError, match="one of all, heads, lora"):
        trainable_names(model, mode="some", tasks=["promoter"])


def test_adapters_start_as_the_base_model_and_load_its_checkpoint(tiny_config, tmp_path):
    base = make(tiny_config).eval()
    adapted = make(tiny_config, lora_rank=4).eval()
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    tokens = torch.randint(1, 5, (3, 20))

    assert all(is_adapter(n) for n in missing) and missing and not unexpected
    assert sum(isinstance(m, LoRALinear) for m in adapted.modules()) == 6 * tiny_config.n_layers
    torch.testing.assert_close(adapted(tokens, "promoter").logits, base(tokens, "promoter").logits)


@pytest.mark.parametrize("mode", ["lora", "heads"])
@pytest.mark.parametrize("task", TASKS)
def test_dp_step_updates_only_the_trainable_parameters_with_clipped_gradients(tiny_config, mode, task):
    model = make(tiny_config, lora_rank=4).train()
    names = trainable_names(model, mode=mode, tasks=[task])
    set_trainable(model, names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(1, 5, (5, 16))
    tokens[2, 10:] = PAD_ID
    labels = (torch.randint(0, 3, (5, 16)).masked_fill(tokens == PAD_ID, -100) if task == "splice"
              else torch.randint(0, 2, (5,)))
    params = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.SGD(params, lr=1.0)
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=5)
    hooks, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0, max_grad_norm=0.01,
        poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False)
    x, y = next(iter(loader))
    if mode == "lora":  # adapters' B starts at zero, so A gets no gradient on the first step: move B first
        for module in model.modules():
            if isinstance(module, LoRALinear):
                torch.nn.init.normal_(module.lora_b.weight, std=0.1)
    task_loss(task, model(x, task).logits, y).backward()
    per_sample = torch.cat([p.grad_sample.reshape(5, -1) for p in params], dim=1)
    optimizer.step()
    hooks.cleanup()

    assert torch.all(per_sample.norm(dim=1) > 0.01)  # every sample is clipped: the check is not vacuous
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if mode == "lora":
        changed -= {n for n in changed if n.endswith("lora_b.weight")}  # moved by hand above
        names = {n for n in names if not n.endswith("lora_b.weight")}
    assert changed <= names and changed


def test_start_from_loads_the_backbone_and_keeps_fresh_what_the_checkpoint_lacks(tiny_config, tmp_path):
    pretrained = make(tiny_config)
    with torch.no_grad():
        pretrained.embedding.tokens.weight.add_(1.0)
    save_checkpoint(tmp_path / "pre", weights=pretrained.state_dict(), model_config=pretrained.config,
                    tasks=TASKS, round=0)
    model = make(tiny_config, lora_rank=4)

    fresh = start_from(model, tmp_path / "pre")

    torch.testing.assert_close(model.embedding.tokens.weight, pretrained.embedding.tokens.weight)
    assert fresh and all(is_adapter(n) for n in fresh)


def test_start_from_refuses_a_backbone_that_does_not_fit(tiny_config, tmp_path):
    other = GenomicTransformer(ModelConfig(**{**tiny_config.to_dict(), "d_model": 48}), tasks=TASKS)
    save_checkpoint(tmp_path / "other", weights=other.state_dict(), model_config=other.config, tasks=TASKS, round=0)

    with pytest.raises(CheckpointError, match="backbone does not fit"):
        start_from(make(tiny_config), tmp_path / "other")
