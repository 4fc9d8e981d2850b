import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from common.finetuning import head_of
from common.model import GenomicTransformer, ModelConfig, ModelConfigError, SequenceHead, parameters_for_task
from common.tasks import TASK_NAMES, task_loss
from common.tokenizer import PAD_ID

OPTIONS = {"plain": {}, "codon_phase": {"codon_phase": True}, "hierarchical": {"hierarchical": True},
           "multimodal": {"epigenetic_tracks": 3}, "motif_stem": {"motif_kernel": 5},
           "linear_paths": {"kmer_linear": 3, "codon_frames": True}, "mean_max_pooling": {"pooling": "mean_max"},
           "scaled_bounded_paths": {"kmer_linear": {"promoter": 3, "coding": 2, "splice": 2},
                                    "kmer_norm": {"coding": 4}, "kmer_logit_bound": {"promoter": 0.5}},
           "all": {"codon_phase": True, "hierarchical": True, "epigenetic_tracks": 2, "motif_kernel": 3,
                   "kmer_linear": 2, "codon_frames": True, "pooling": "mean_max"}}


def make(tiny_config, **options):
    torch.manual_seed(0)
    model = GenomicTransformer(ModelConfig(**{**tiny_config.to_dict(), **options}))
    for name, p in model.named_parameters():
        if ".kmers." in name or ".codons.linear." in name:  # linear paths start at zero: give them weight,
            # or the checks below see nothing (the codon path's inputs are scaled up: less, or it saturates)
            torch.nn.init.normal_(p, std=0.02 if ".codons." in name else 0.1)
    return model


def random_batch(batch=4, length=30, seed=0, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 6, (batch, length), generator=g)
    for row, start in enumerate(pad_from or []):
        tokens[row, start:] = PAD_ID
    return tokens


def tracks_for(model, tokens):
    e = model.config.epigenetic_tracks
    return torch.randn(*tokens.shape, e, generator=torch.Generator().manual_seed(1)) if e else None


@pytest.mark.parametrize("task", TASK_NAMES)
def test_output_shapes(tiny_config, task):
    model = make(tiny_config).eval()
    tokens = random_batch(3, 21)
    out = model(tokens, task)
    expected = (3, 21, 3) if task == "splice" else (3, 2)
    assert tuple(out.logits.shape) == expected
    assert out.attentions is None


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("task", ["promoter", "splice"])
def test_padding_invariance(tiny_config, option, task):
    model = make(tiny_config, **OPTIONS[option]).eval()
    tokens = random_batch(2, 25, pad_from=[25, 17])
    tracks = tracks_for(model, tokens)
    padded = torch.cat([tokens, torch.full((2, 11), PAD_ID)], dim=1)
    padded_tracks = None if tracks is None else torch.cat([tracks, torch.randn(2, 11, tracks.shape[-1])], 1)
    with torch.no_grad():
        short = model(tokens, task, tracks=tracks).logits
        long = model(padded, task, tracks=padded_tracks).logits
    if task == "splice":  # compare the real bases only
        long = long[:, :25]
        short, long = short[1, :17], long[1, :17]
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", OPTIONS)
def test_attention_rows_sum_to_one_over_real_keys(tiny_config, option):
    model = make(tiny_config, **OPTIONS[option]).eval()
    tokens = random_batch(3, 24, pad_from=[24, 13, 5])
    with torch.no_grad():
        out = model(tokens, "promoter", return_attention=True, tracks=tracks_for(model, tokens))
    assert len(out.attentions) == tiny_config.n_layers
    real = (tokens != PAD_ID)
    if model.config.hierarchical:
        real = torch.nn.functional.pad(real, (0, (-24) % 3)).view(3, -1, 3).any(-1)
    for weights in out.attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert torch.all(weights.masked_select(~real[:, None, None, :].expand_as(weights)) == 0)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("task", ["enhancer", "splice"])
def test_explicit_and_sdpa_attention_agree(tiny_config, option, task):
    model = make(tiny_config, **OPTIONS[option]).eval()
    tokens = random_batch(3, 27, pad_from=[27, 20, 9])
    tracks = tracks_for(model, tokens)
    with torch.no_grad():
        fast = model(tokens, task, tracks=tracks).logits
        explicit = model(tokens, task, return_attention=True, tracks=tracks).logits
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_configuration_passes_the_opacus_validator(tiny_config, option):
    model = make(tiny_config, **OPTIONS[option]).train()
    assert ModuleValidator.validate(model, strict=True) == []


def _one_dp_step(model, task, tokens, labels, clip, tracks=None):
    params = parameters_for_task(model, task)
    for name, p in model.named_parameters():
        p.requires_grad_(head_of(name) in (None, task))
    optimizer = torch.optim.SGD(params, lr=0.0)
    inputs = (tokens, labels) if tracks is None else (tokens, labels, tracks)
    loader = DataLoader(TensorDataset(*inputs), batch_size=len(tokens))
    private, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=clip, poisson_sampling=False, grad_sample_mode="hooks")
    batch = next(iter(loader))
    out = private(batch[0], task, tracks=batch[2] if len(batch) > 2 else None)
    task_loss(task, out.logits, batch[1]).backward()
    trained = [p for p in params if p.requires_grad]
    per_sample = torch.cat([p.grad_sample.reshape(len(tokens), -1) for p in trained], dim=1)  # [B, P]
    optimizer.step()
    return per_sample, torch.cat([p.grad.reshape(-1) for p in trained])


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("task", TASK_NAMES)
def test_one_dp_sgd_step_clips_every_per_sample_gradient(tiny_config, option, task):
    model = make(tiny_config, **OPTIONS[option]).train()
    tokens = random_batch(6, 24, pad_from=[24, 20, 18, 24, 9, 15])
    labels = (torch.randint(0, 3, (6, 24)).masked_fill(tokens == PAD_ID, -100) if task == "splice"
              else torch.randint(0, 2, (6,)))
    clip = 0.05  # small enough that every sample is clipped
    per_sample, step_grad = _one_dp_step(model, task, tokens, labels, clip, tracks_for(model, tokens))
    norms = per_sample.norm(dim=1)
    assert torch.all(norms > clip)  # the clip bites, so the check below is not vacuous
    # With noise 0 the step's gradient must be the mean of per-sample gradients each scaled to norm <= clip.
    clipped = per_sample * torch.clamp(clip / (norms + 1e-6), max=1.0)[:, None]
    assert torch.all(clipped.norm(dim=1) <= clip * (1 + 1e-5))
    torch.testing.assert_close(step_grad, clipped.mean(dim=0), atol=1e-7, rtol=1e-4)


def test_parameter_ownership(tiny_config):
    model = make(tiny_config)
    names = [n for n, _ in model.named_parameters()]
    assert {head_of(n) for n in names} == {None, *TASK_NAMES}
    splice = {id(p) for p in parameters_for_task(model, "splice")}
    assert all(id(p) not in splice for n, p in model.named_parameters() if head_of(n) == "promoter")


def test_positional_encoding_is_a_buffer_in_a_parameter_free_module(tiny_config):
    model = make(tiny_config)
    positions = model.embedding.positions
    assert list(positions.parameters()) == []
    assert "table" in dict(positions.named_buffers())
    assert not any("positions" in k for k in model.state_dict())  # not persisted: derived from config


def test_unknown_task_is_an_error(tiny_config):
    model = make(tiny_config)
    with pytest.raises(ValueError, match="task 'histone' has no head"):
        model(random_batch(1, 5), "histone")


def test_too_long_input_is_an_error(tiny_config):
    model = make(tiny_config)
    with pytest.raises(ValueError, match="exceeds model.max_len 96"):
        model(random_batch(1, 97), "promoter")


def test_tracks_required_by_multimodal_model(tiny_config):
    model = make(tiny_config, epigenetic_tracks=2)
    with pytest.raises(ValueError, match="expects epigenetic tracks"):
        model(random_batch(1, 9), "promoter")


@pytest.mark.parametrize("field, value, message", [
    ("d_model", 30, "not divisible by model.n_heads"), ("n_layers", 0, "model.n_layers: expected a positive"),
    ("dropout", 1.0, "model.dropout"), ("max_len", -1, "model.max_len"), ("n_heads", 0, "model.n_heads"),
    ("vocab_size", True, "model.vocab_size"), ("kmer_linear", 7, "model.kmer_linear"),
    ("kmer_linear", -1, "model.kmer_linear"), ("pooling", "max", "model.pooling: expected one of mean, mean_max"),
    ("kmer_linear", {"promoter": 7}, "model.kmer_linear: expected task names mapped to 0..6"),
    ("kmer_linear", {"promoter": True}, "model.kmer_linear: expected task names mapped")])
def test_bad_model_config(field, value, message):
    with pytest.raises(ModelConfigError, match=message):
        ModelConfig(**{"d_model": 32, "n_heads": 4, field: value})


def test_mean_max_pooling_sees_a_motif_anywhere_and_never_padding():
    """The max half of ``mean_max`` is each channel's largest value over real bases: one base that
    lights a channel moves it however long the sequence (the mean dilutes it by the length), a padded
    position never does, and a record with no base pools to zeros, as the mean does."""
    head = SequenceHead(4, 2, 0.0, pooling="mean_max")
    captured = []
    head.mlp.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    x = torch.zeros(3, 50, 4)
    x[0, 7, 2] = 5.0  # one lit base in a long real sequence
    x[1, 45, 1] = 9.0  # a lit value at a padded position
    tokens = torch.full((3, 50), 1)
    tokens[1, 40:] = PAD_ID
    tokens[2, :] = PAD_ID  # no base at all
    head(x, tokens)
    mean, highest = captured[0][:, :4], captured[0][:, 4:]
    torch.testing.assert_close(highest[0], torch.tensor([0.0, 0.0, 5.0, 0.0]))
    torch.testing.assert_close(mean[0, 2], torch.tensor(0.1))
    torch.testing.assert_close(highest[1], torch.zeros(4))
    torch.testing.assert_close(captured[0][2], torch.zeros(8))


def test_odd_model_width_is_an_error():
    with pytest.raises(ModelConfigError, match="model.d_model: expected an even number, got 9"):
        ModelConfig(d_model=9, n_heads=3)


def test_model_config_dict_round_trip(tiny_config):
    assert ModelConfig.from_dict(tiny_config.to_dict()) == tiny_config
    with pytest.raises(ModelConfigError, match="unknown keys"):
        ModelConfig.from_dict({"d_model": 32, "heads": 4})
