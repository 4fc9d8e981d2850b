"""The linear k-mer paths beside the heads (model.kmer_linear): the same features as the DP k-mer
baseline, computed from tokens; a fresh path changes nothing; a checkpoint without paths loads."""

import numpy as np
import pytest
import torch

from common.analysis.dp_baselines import enrichment_features
from common.kmer_paths import WindowKmerPath, kmer_enrichment, kmer_feature_count
from common.model import GenomicTransformer, ModelConfig
from common.tokenizer import PAD_ID, encode

SEQUENCES = ["ACGTNNACGTTTGACA", "GGGCCCAT", "NNNN", "ACGTACGTAACCGGTTRYACG", "T"]


def padded_tokens(sequences):
    tokens = torch.full((len(sequences), max(map(len, sequences)) + 3), PAD_ID)
    for row, s in enumerate(sequences):
        tokens[row, : len(s)] = torch.from_numpy(encode(s))
    return tokens


@pytest.mark.parametrize("k", [1, 2, 4])
def test_features_equal_the_dp_baselines(k):
    rng = np.random.default_rng(k)
    sequences = SEQUENCES + ["".join(rng.choice(list("ACGTN"), size=int(n))) for n in rng.integers(1, 60, 20)]
    got = kmer_enrichment(padded_tokens(sequences), k).numpy()
    assert got.shape == (len(sequences), kmer_feature_count(k))
    np.testing.assert_allclose(got, enrichment_features(sequences, k=k), atol=1e-5)


def test_a_mask_token_counts_as_no_base():
    tokens = padded_tokens(["ACGTACGT"])
    masked = tokens.clone()
    masked[0, 2] = 6  # <mask>
    with_n = padded_tokens(["ACNTACGT"])
    torch.testing.assert_close(kmer_enrichment(masked, 3), kmer_enrichment(with_n, 3))


def config(**options):
    return ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=64, **options)


@pytest.mark.parametrize("task", ["promoter", "splice"])
def test_a_fresh_path_changes_nothing_and_a_trained_one_adds_to_the_logits(task):
    torch.manual_seed(0)
    plain = GenomicTransformer(config()).eval()
    wide = GenomicTransformer(config(kmer_linear=3)).eval()
    missing, unexpected = wide.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".kmers." in name for name in missing)
    tokens = padded_tokens(SEQUENCES)
    with torch.no_grad():
        torch.testing.assert_close(wide(tokens, task).logits, plain(tokens, task).logits)
        path = wide.heads[task].kmers
        torch.nn.init.normal_(path.linear.weight if hasattr(path, "linear") else path.conv.weight)
        assert not torch.allclose(wide(tokens, task).logits, plain(tokens, task).logits)


def test_window_path_reads_tokens_as_the_baseline_reads_codes():
    path = WindowKmerPath(3, left=4, right=2, zero_init=False)
    tokens = padded_tokens(["ACGTNACGGT", "TTGA"])
    codes = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 2, 3, 4, 4, 4], [3, 3, 2, 0, 4, 4, 4, 4, 4, 4, 4, 4, 4]])
    with torch.no_grad():
        torch.testing.assert_close(path(tokens), path.from_codes(codes))
        # a base's logits depend only on its window: changing base 9 leaves bases 0..2 alone (9 - 2 > 2 + 4)
        changed = tokens.clone()
        changed[0, 9] = 1
        torch.testing.assert_close(path(changed)[0, :3], path(tokens)[0, :3])
        assert not torch.allclose(path(changed)[0, 9], path(tokens)[0, 9])


@pytest.mark.parametrize("mode", ["all", "heads", "lora"])
def test_the_path_trains_and_travels_with_its_head_in_every_fine_tuning_mode(mode):
    from common.finetuning import head_of, trainable_names

    model = GenomicTransformer(config(kmer_linear=2, lora_rank=2 if mode == "lora" else 0))
    names = trainable_names(model, mode=mode, tasks=("promoter",))
    assert {"heads.promoter.kmers.linear.weight", "heads.promoter.kmers.linear.bias"} <= names
    assert "heads.splice.kmers.conv.weight" not in names
    assert head_of("heads.splice.kmers.conv.weight") == "splice"  # averaged with its head, per task
