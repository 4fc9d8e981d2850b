"""The linear k-mer paths beside the heads (model.kmer_linear): the same features as the DP k-mer
baseline, computed from tokens; a fresh path changes nothing; a checkpoint without paths loads."""

import numpy as np
import pytest
import torch

from common.analysis.baselines import KmerSpectrum
from common.analysis.dp_baselines import enrichment_features
from common.kmer_paths import (
    FrameCodonPath,
    SequenceKmerPath,
    WindowKmerPath,
    canonical_kmers,
    frame_codon_usage,
    kmer_enrichment,
    kmer_feature_count,
)
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


def reverse_complement(sequence: str) -> str:
    return sequence.translate(str.maketrans("ACGTN", "TGCAN"))[::-1]


def kmer_string(index: int, j: int) -> str:
    return "".join("ACGT"[(index // 4 ** (j - 1 - i)) % 4] for i in range(j))


@pytest.mark.parametrize("j", [1, 2, 3, 4])
def test_canonical_kmers_pair_each_kmer_with_its_reverse_complement(j):
    canonical, partner = canonical_kmers(j)
    strings = [kmer_string(int(i), j) for i in canonical]
    assert [kmer_string(int(i), j) for i in partner] == [reverse_complement(s) for s in strings]
    assert all(s <= reverse_complement(s) for s in strings)  # the smaller of each pair (A < C < G < T)
    every = {min(s, reverse_complement(s)) for s in (kmer_string(i, j) for i in range(4 ** j))}
    assert set(strings) == every and len(strings) == len(every)  # each pair once, palindromes included
    assert kmer_feature_count(j, both_strands=True) - kmer_feature_count(j - 1, both_strands=True) == len(every)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_both_strand_features_are_the_baselines_both_strand_spectrum(k):
    """An independent count: the k-mer baseline's ``both_strands`` spectrum (numpy, counts of each
    k-mer plus its reverse complement's), read at the canonical k-mers, as enrichment."""
    rng = np.random.default_rng(k)
    sequences = SEQUENCES[:2] + SEQUENCES[3:] + ["".join(rng.choice(list("ACGTN"), size=int(n)))
                                                 for n in rng.integers(k, 60, 20)]
    got = kmer_enrichment(padded_tokens(sequences), k, both_strands=True).numpy()
    assert got.shape == (len(sequences), kmer_feature_count(k, both_strands=True))
    spectrum = KmerSpectrum(k=k, both_strands=True).fit(sequences).transform(sequences)
    offset, expected = 0, []
    for j in range(1, k + 1):
        expected.append(spectrum[:, offset + canonical_kmers(j)[0].numpy()] * 4 ** j - 1)
        offset += 4 ** j
    np.testing.assert_allclose(got, np.hstack(expected), atol=1e-5)


def test_both_strand_path_scores_a_sequence_and_its_reverse_complement_alike():
    torch.manual_seed(0)
    sequences = ["ACGTTGACCATGGAAC", "TTTTTGGGCA", "ACGNNTTAGC"]
    both, forward = SequenceKmerPath(4, 2, both_strands=True), SequenceKmerPath(4, 2)
    for path in (both, forward):
        torch.nn.init.normal_(path.linear.weight)
    tokens, flipped = padded_tokens(sequences), padded_tokens([reverse_complement(s) for s in sequences])
    with torch.no_grad():
        torch.testing.assert_close(both(tokens), both(flipped))
        assert not torch.allclose(forward(tokens), forward(flipped))  # one strand: not the same
    assert both.linear.in_features == 4 // 2 + 10 + 32 + 136 < forward.linear.in_features == 4 + 16 + 64 + 256


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
    wide = GenomicTransformer(config(kmer_linear=3, codon_frames=True)).eval()
    missing, unexpected = wide.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".kmers." in name or ".codons." in name for name in missing)
    tokens = padded_tokens(SEQUENCES)
    paths = [wide.heads[task].kmers] + ([] if task == "splice" else [wide.heads[task].codons])
    with torch.no_grad():
        torch.testing.assert_close(wide(tokens, task).logits, plain(tokens, task).logits)
        for path in paths:
            before = wide(tokens, task).logits
            torch.nn.init.normal_(path.linear.weight if hasattr(path, "linear") else path.conv.weight)
            assert not torch.allclose(wide(tokens, task).logits, before)


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

    model = GenomicTransformer(config(kmer_linear=2, codon_frames=True, lora_rank=2 if mode == "lora" else 0))
    names = trainable_names(model, mode=mode, tasks=("promoter",))
    assert {"heads.promoter.kmers.linear.weight", "heads.promoter.kmers.linear.bias",
            "heads.promoter.codons.linear.weight", "heads.promoter.codons.linear.bias"} <= names
    assert "heads.splice.kmers.conv.weight" not in names
    assert head_of("heads.splice.kmers.conv.weight") == "splice"  # averaged with its head, per task


def test_codon_usage_is_counted_per_reading_frame():
    usage = frame_codon_usage(padded_tokens(["ATGAAATAAN", "TTTTT"])).numpy()  # [2, 3, 64]
    frequency = (usage + 1.0) / 64.0

    def index(codon):  # A0 C1 G2 T3, first base most significant
        return sum("ACGT".index(b) * 4 ** (2 - i) for i, b in enumerate(codon))

    # frame 0: ATG AAA TAA; frame 1: TGA AAT (AAN has no base at N: dropped); frame 2: GAA ATA
    for frame, codons in enumerate([["ATG", "AAA", "TAA"], ["TGA", "AAT"], ["GAA", "ATA"]]):
        assert np.flatnonzero(frequency[0, frame]).tolist() == sorted(map(index, codons))
        np.testing.assert_allclose(frequency[0, frame, [index(c) for c in codons]], 1 / len(codons), rtol=1e-6)
    # TTTTT: one TTT in each frame; the padding after it adds nothing
    np.testing.assert_allclose(frequency[1, :, index("TTT")], 1.0)


def test_the_codon_path_does_not_care_where_the_reading_frame_starts():
    torch.manual_seed(0)
    path = FrameCodonPath(2)
    torch.nn.init.normal_(path.linear.weight)
    orf = "ATGGCTGCAAAAGGTCTTTGGCCTCAAGCAGCAGAT"
    shifted = [orf, "N" + orf, "NN" + orf, "NNN" + orf]  # the same codons in frames 0, 1, 2, 0
    with torch.no_grad():
        scores = path(padded_tokens(shifted))
        torch.testing.assert_close(scores, scores[:1].expand_as(scores))
        assert not torch.allclose(path(padded_tokens([orf[1:] + "A"])), scores[:1])  # its codons change


def test_the_codon_path_learns_an_open_reading_frame_that_kmer_counts_miss():
    """Positives: 200 bases of sense codons (no stop) starting at a random offset; negatives: the same
    kind of sequence with its bases shuffled (the positives' composition, stops in every frame but
    ~12 % of the time). In-frame codons see the stop-free frame; 1..3-mer counts barely can."""
    rng = np.random.default_rng(0)
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]

    def orf():
        return "".join(rng.choice(list("ACGT"), size=int(rng.integers(0, 3)))) + \
            "".join(rng.choice(sense, size=70))

    n = 1500  # per class; with a few hundred the 128 weights memorise codon usage instead
    positives = [orf()[:200] for _ in range(n)]
    negatives = ["".join(rng.permutation(list(s))) for s in (orf()[:200] for _ in range(n))]
    tokens, labels = padded_tokens(positives + negatives), torch.tensor([1] * n + [0] * n)
    train, test = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)

    def accuracy(path):
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(path.parameters(), lr=0.05)
        for _ in range(100):
            loss = torch.nn.functional.cross_entropy(path(tokens[train]), labels[train])
            optimizer.zero_grad(), loss.backward(), optimizer.step()
        with torch.no_grad():
            return (path(tokens[test]).argmax(1) == labels[test]).float().mean().item()

    codons, kmers = accuracy(FrameCodonPath(2)), accuracy(SequenceKmerPath(3, 2))
    assert codons > 0.85 and codons > kmers + 0.15, (codons, kmers)  # measured 0.90 and 0.65


def test_the_codon_path_goes_only_where_the_config_says():
    model = GenomicTransformer(config(codon_frames=["coding"]), tasks=("promoter", "coding", "splice"))
    assert model.heads["coding"].codons is not None and model.heads["promoter"].codons is None
    assert GenomicTransformer(config(codon_frames=True), tasks=("promoter", "coding")).heads["promoter"].codons is not None
    assert ModelConfig.from_dict(config(codon_frames=["coding"]).to_dict()).codon_frames == ("coding",)  # JSON round trip
    from common.model import ModelConfigError

    for wrong in (["splice"], ["enchancer"]):  # per-position, or no task's name
        with pytest.raises(ModelConfigError, match="codon_frames"):
            GenomicTransformer(config(codon_frames=wrong), tasks=("promoter", "coding", "splice"))
    # A task this model has no head for (one institution's model of the federation's tasks): ignored.
    subset = GenomicTransformer(config(codon_frames=["coding"], kmer_linear={"coding": 4, "promoter": 5}),
                                tasks=("promoter", "splice"))
    assert subset.heads["promoter"].codons is None and subset.heads["promoter"].kmers.k == 5
    assert subset.heads["splice"].kmers is None
    with pytest.raises(ModelConfigError, match="codon_frames"):
        config(codon_frames="coding")


def test_both_strand_counting_goes_only_where_the_config_says():
    from common.model import ModelConfigError

    model = GenomicTransformer(config(kmer_linear=3, kmer_both_strands=["enhancer"]),
                               tasks=("promoter", "enhancer", "splice"))
    assert model.heads["enhancer"].kmers.both_strands and not model.heads["promoter"].kmers.both_strands
    assert model.heads["enhancer"].kmers.linear.in_features == kmer_feature_count(3, both_strands=True)
    every = GenomicTransformer(config(kmer_linear=3, kmer_both_strands=True), tasks=("promoter", "splice"))
    assert every.heads["promoter"].kmers.both_strands  # every sequence head; the window path has no strands option
    assert ModelConfig.from_dict(config(kmer_linear=3, kmer_both_strands=["enhancer"]).to_dict()
                                 ).kmer_both_strands == ("enhancer",)  # JSON round trip
    for wrong in (["splice"], ["enchancer"]):  # per-position, or no task's name
        with pytest.raises(ModelConfigError, match="kmer_both_strands"):
            GenomicTransformer(config(kmer_linear=3, kmer_both_strands=wrong), tasks=("promoter", "splice"))
    for options in ({"kmer_both_strands": True}, {"kmer_linear": {"promoter": 4}, "kmer_both_strands": ["enhancer"]},
                    {"kmer_linear": 3, "kmer_both_strands": "enhancer"}):
        with pytest.raises(ModelConfigError, match="kmer_both_strands"):  # no path to apply it to; not a list
            config(**options)


def test_a_both_strand_model_round_trips_through_a_checkpoint_and_says_so_on_its_card(tmp_path):
    from common.checkpoint import load_model
    from common.model_card import basic_card

    torch.manual_seed(0)
    cfg = config(kmer_linear={"promoter": 4, "enhancer": 3}, kmer_both_strands=["enhancer"])
    model = GenomicTransformer(cfg, tasks=("promoter", "enhancer")).eval()
    torch.nn.init.normal_(model.heads["enhancer"].kmers.linear.weight)
    loaded, _ = load_model(model.save_pretrained(tmp_path / "ckpt"))
    tokens = padded_tokens(["ACGTTGACCATGGAAC", "TTTTTGGGCA"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, "enhancer").logits, model(tokens, "enhancer").logits)
    card = basic_card(model_config=cfg, tasks=("promoter", "enhancer"), round=0, state={})
    assert "linear k-mer paths (enhancer: k = 1..3, both strands; promoter: k = 1..4)" in card


def test_a_card_names_the_shared_settings_when_every_head_has_the_same_path():
    from common.model_card import basic_card

    cfg = config(kmer_linear=3, kmer_both_strands=True, kmer_norm=4.0, kmer_logit_bound=2.0)
    card = basic_card(model_config=cfg, tasks=("promoter", "enhancer"), round=0, state={})
    assert "k = 1..3, both strands, scaled to L2 norm 4, logits bounded by ±2 (tanh)" in card
    one_strand = config(kmer_linear=3, kmer_both_strands=["enhancer"], kmer_norm={"enhancer": 8.0})
    card = basic_card(model_config=one_strand, tasks=("promoter", "enhancer"), round=0, state={})
    # the shared part names no per-task setting; the task that has them is listed after it
    assert "linear k-mer paths (k = 1..3; enhancer: k = 1..3, both strands, scaled to L2 norm 8)" in card


@pytest.mark.parametrize("k, both_strands", [(2, False), (4, False), (5, True)])
def test_a_scaled_path_bounds_each_records_gradient_whatever_k_and_length(k, both_strands):
    """model.kmer_norm: the raw features' norm grows with k and falls with length (20-130 for
    100-200 bp at k = 4-5), so a raw path's per-record gradient is far above a clipping norm of 1;
    scaled, the weight's gradient is exactly ||p - y|| * norm for every record (all-N included)."""
    norm = 3.0
    raw = SequenceKmerPath(k, 2, both_strands)
    scaled = SequenceKmerPath(k, 2, both_strands, norm=norm)
    random_160bp = "".join(np.random.default_rng(0).choice(list("ACGT"), size=160))
    tokens = padded_tokens(SEQUENCES + [random_160bp])
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    raw_norms, scaled_norms = [], []
    for path, norms in ((raw, raw_norms), (scaled, scaled_norms)):
        for row in range(len(tokens)):
            path.zero_grad()
            torch.nn.functional.cross_entropy(path(tokens[row : row + 1]), labels[row : row + 1]).backward()
            norms.append(path.linear.weight.grad.norm().item())
    # a fresh path predicts 1/2 for both classes: ||p - y|| = sqrt(1/2)
    np.testing.assert_allclose(scaled_norms, norm * 0.5 ** 0.5, rtol=1e-5)
    if k >= 4:  # what the option is for: a 160 bp record's raw 4- and 5-mer counts are sparse, their norm large
        assert raw_norms[-1] > 10  # far above a clipping norm of 1
    features = kmer_enrichment(tokens, k, both_strands=both_strands)
    with torch.no_grad():  # the same linear model on the rescaled features: only the scale changed
        torch.nn.init.normal_(scaled.linear.weight)
        expected = torch.nn.functional.linear(features * (norm / features.norm(dim=1, keepdim=True)),
                                              scaled.linear.weight, scaled.linear.bias)
        torch.testing.assert_close(scaled(tokens), expected)


def test_the_feature_norm_goes_only_where_the_config_says_and_survives_a_checkpoint(tmp_path):
    from common.checkpoint import load_model
    from common.model import ModelConfigError
    from common.model_card import basic_card

    cfg = config(kmer_linear={"promoter": 4, "enhancer": 3, "splice": 2}, kmer_norm={"promoter": 2, "enhancer": 8.5})
    model = GenomicTransformer(cfg, tasks=("promoter", "enhancer", "splice", "coding")).eval()
    assert model.heads["promoter"].kmers.norm == 2.0 and model.heads["enhancer"].kmers.norm == 8.5
    assert model.heads["coding"].kmers is None  # no path: nothing to scale
    every = GenomicTransformer(config(kmer_linear=3, kmer_norm=4), tasks=("promoter", "splice"))
    assert every.heads["promoter"].kmers.norm == 4.0  # the window path of a per-position head is not scaled
    torch.nn.init.normal_(model.heads["promoter"].kmers.linear.weight)
    loaded, _ = load_model(model.save_pretrained(tmp_path / "ckpt"))
    assert loaded.config.kmer_norm == {"enhancer": 8.5, "promoter": 2.0}
    tokens = padded_tokens(["ACGTTGACCATGGAAC", "TTTTTGGGCA"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, "promoter").logits, model(tokens, "promoter").logits)
    card = basic_card(model_config=cfg, tasks=("promoter", "enhancer"), round=0, state={})
    assert "enhancer: k = 1..3, scaled to L2 norm 8.5" in card and "promoter: k = 1..4, scaled to L2 norm 2" in card
    for wrong, match in (({"kmer_linear": 3, "kmer_norm": -1}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_norm": float("nan")}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_norm": True}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_norm": 1e6}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_norm": {"promoter": "big"}}, "expected 0"),
                         ({"kmer_linear": {"promoter": 4}, "kmer_norm": {"enhancer": 2}}, "no k-mer path")):
        with pytest.raises(ModelConfigError, match=f"model.kmer_norm: {match}"):
            config(**wrong)
    for wrong in ({"splice": 2}, {"enchancer": 2}):  # per-position (a window path), or no task's name
        with pytest.raises(ModelConfigError, match="model.kmer_norm"):
            GenomicTransformer(config(kmer_linear=3, kmer_norm=wrong), tasks=("promoter", "splice"))


def test_a_bounded_path_learns_like_a_raw_one_until_it_is_confident_then_lets_go():
    """model.kmer_logit_bound: the path's logits are b·tanh(z / b): within ±b, close to the raw
    path's while small, and a record the path already calls with a wide margin sends little gradient
    through it (the clipped gradient goes to the network instead)."""
    bound = 2.0
    raw = SequenceKmerPath(4, 2)
    bounded = SequenceKmerPath(4, 2, logit_bound=bound)
    tokens = padded_tokens(SEQUENCES)
    assert torch.equal(bounded(tokens), torch.zeros(len(SEQUENCES), 2))  # a fresh path still adds nothing
    with torch.no_grad():
        torch.nn.init.normal_(raw.linear.weight, std=0.5)
        bounded.load_state_dict(raw.state_dict())
        z = raw(tokens)
        torch.testing.assert_close(bounded(tokens), bound * torch.tanh(z / bound))
        assert z.abs().max() > 3 * bound and bounded(tokens).abs().max() <= bound  # the bound bites
        small = raw.linear.weight * 1e-4  # tanh(x) ~ x near zero: a path that is not yet confident
        raw.linear.weight.copy_(small)
        bounded.linear.weight.copy_(small)
        torch.testing.assert_close(bounded(tokens), raw(tokens), rtol=1e-4, atol=1e-7)

    def path_gradient(path, logit, label):
        path.zero_grad()
        with torch.no_grad():
            path.linear.weight.zero_()
            path.linear.bias.copy_(torch.tensor([-logit, logit]))  # z calls class 1 by a margin of 2 * logit
        torch.nn.functional.cross_entropy(path(tokens[:1]), torch.tensor([label])).backward()
        return path.linear.bias.grad.norm().item()

    for label in (0, 1):  # a small margin, right or wrong: both paths push alike
        assert path_gradient(bounded, 0.1, label) == pytest.approx(path_gradient(raw, 0.1, label), rel=0.01)
    # a margin far past the bound: the raw path still pushes at almost full length on a record it calls
    # wrong (under DP: the whole clipped gradient), the bounded one has let go of it
    assert path_gradient(raw, 6.0, 0) > 1.0
    assert path_gradient(bounded, 6.0, 0) < 0.02 * path_gradient(raw, 6.0, 0)


def test_opacus_per_sample_gradients_of_a_bounded_path_are_each_records_own():
    """The privacy accounting rests on each record's clipped gradient being its own: Opacus builds
    nn.Linear's per-sample gradients from what flows back into it, through the tanh; check them
    against one backward pass per record."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    path = SequenceKmerPath(3, 2, logit_bound=0.5)
    torch.nn.init.normal_(path.linear.weight, std=0.5)  # saturated for some records, not for others
    tokens = padded_tokens(SEQUENCES + ["ACGTGGGTTTACCA", "CCCCGGGGAAAATTTT"])
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    sampled = GradSampleModule(path)  # loss_reduction "mean", as the trainer's engine
    torch.nn.functional.cross_entropy(sampled(tokens), labels).backward()
    for row in range(len(tokens)):
        single = SequenceKmerPath(3, 2, logit_bound=0.5)
        single.load_state_dict({k.removeprefix("_module."): v for k, v in sampled.state_dict().items()})
        torch.nn.functional.cross_entropy(single(tokens[row : row + 1]), labels[row : row + 1]).backward()
        torch.testing.assert_close(path.linear.weight.grad_sample[row], single.linear.weight.grad)
        torch.testing.assert_close(path.linear.bias.grad_sample[row], single.linear.bias.grad)


def test_the_logit_bound_goes_only_where_the_config_says_and_survives_a_checkpoint(tmp_path):
    from common.checkpoint import load_model
    from common.model import ModelConfigError
    from common.model_card import basic_card

    cfg = config(kmer_linear={"promoter": 4, "enhancer": 3, "splice": 2}, kmer_norm={"enhancer": 8},
                 kmer_logit_bound={"promoter": 2})
    model = GenomicTransformer(cfg, tasks=("promoter", "enhancer", "splice")).eval()
    assert model.heads["promoter"].kmers.logit_bound == 2.0 and model.heads["enhancer"].kmers.logit_bound == 0.0
    torch.nn.init.normal_(model.heads["promoter"].kmers.linear.weight, std=3.0)
    loaded, _ = load_model(model.save_pretrained(tmp_path / "ckpt"))
    assert loaded.config.kmer_logit_bound == {"promoter": 2.0}
    tokens = padded_tokens(["ACGTTGACCATGGAACGGGTA", "TTTTTGGGCA"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, "promoter").logits, model(tokens, "promoter").logits)
    card = basic_card(model_config=cfg, tasks=("promoter", "enhancer"), round=0, state={})
    assert "promoter: k = 1..4, logits bounded by ±2 (tanh)" in card and "enhancer: k = 1..3, scaled to L2 norm 8" in card
    for wrong, match in (({"kmer_linear": 3, "kmer_logit_bound": -1}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_logit_bound": float("inf")}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_logit_bound": 101}, "expected 0"),
                         ({"kmer_linear": 3, "kmer_logit_bound": {"promoter": None}}, "expected 0"),
                         ({"kmer_linear": {"promoter": 4}, "kmer_logit_bound": {"enhancer": 2}}, "no k-mer path")):
        with pytest.raises(ModelConfigError, match=f"model.kmer_logit_bound: {match}"):
            config(**wrong)
    with pytest.raises(ModelConfigError, match="model.kmer_logit_bound: .*per-position"):
        GenomicTransformer(config(kmer_linear=3, kmer_logit_bound={"splice": 2}), tasks=("promoter", "splice"))
