"""Sequence-restricted contrastive loss against a brute-force pair loop."""

from __future__ import annotations

import itertools

import pytest
import torch

from reid.core.losses.metric import SequencePairLoss, sequence_pair_indices

# Three sequences: 0 and 1 of series 7, 2 of series 9. charIds repeat across sequences on purpose:
# char 0 of sequence 0 and char 0 of sequence 1 are NOT known to be the same character.
CHARS = torch.tensor([0, 0, 1, 2, 0, 0, 1, 1, 0, 1, 1, 0])
SEQUENCES = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
SERIES = torch.tensor([7, 7, 7, 7, 7, 7, 7, 7, 9, 9, 9, 9])


def brute_force_pairs(chars, sequences, series) -> tuple[set, set]:
    positives, negatives = set(), set()
    for i, j in itertools.permutations(range(len(chars)), 2):
        if sequences[i] == sequences[j]:
            (positives if chars[i] == chars[j] else negatives).add((i, j))
        elif series[i] != series[j]:
            negatives.add((i, j))
    return positives, negatives


def brute_force_loss(embeddings, chars, sequences, series, pos_margin, neg_margin, miner_margins=None):
    """Float64 loop: ContrastiveLoss with PML's AvgNonZeroReducer (mean of non-zero terms per kind)."""
    x = embeddings.double() / embeddings.double().norm(dim=1, keepdim=True)
    positives, negatives = brute_force_pairs(chars.tolist(), sequences.tolist(), series.tolist())
    pos_terms, neg_terms = [], []
    for i, j in sorted(positives):
        d = (x[i] - x[j]).norm()
        if miner_margins is None or d > miner_margins[0]:
            pos_terms.append(torch.relu(d - pos_margin))
    for i, j in sorted(negatives):
        d = (x[i] - x[j]).norm()
        if miner_margins is None or d < miner_margins[1]:
            neg_terms.append(torch.relu(neg_margin - d))
    total = torch.zeros((), dtype=torch.float64)
    for terms in (pos_terms, neg_terms):
        nonzero = [t for t in terms if t > 0]
        if nonzero:
            total = total + torch.stack(nonzero).mean()
    return total


def test_pairs_are_within_sequences_plus_other_series_negatives() -> None:
    a1, p, a2, n = sequence_pair_indices(CHARS, SEQUENCES, SERIES)
    got_pos = set(zip(a1.tolist(), p.tolist(), strict=True))
    got_neg = set(zip(a2.tolist(), n.tolist(), strict=True))
    want_pos, want_neg = brute_force_pairs(CHARS.tolist(), SEQUENCES.tolist(), SERIES.tolist())
    assert got_pos == want_pos and got_neg == want_neg
    assert (0, 4) not in got_pos | got_neg  # same charId, other sequence of the same series: unknown
    assert (0, 8) in got_neg  # same charId, other series: different characters


@pytest.mark.parametrize("pos_margin, neg_margin", [(0.0, 1.0), (0.2, 1.4), (0.5, 0.8)])
def test_loss_and_gradient_match_brute_force(pos_margin: float, neg_margin: float) -> None:
    gen = torch.Generator().manual_seed(int(neg_margin * 10))
    embeddings = torch.randn(len(CHARS), 3, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = SequencePairLoss(pos_margin, neg_margin)(embeddings, CHARS, SEQUENCES, SERIES)
    want = brute_force_loss(embeddings, CHARS, SEQUENCES, SERIES, pos_margin, neg_margin)
    assert want.item() > 0
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)
    (grad,) = torch.autograd.grad(loss, embeddings)
    (want_grad,) = torch.autograd.grad(want, embeddings)
    torch.testing.assert_close(grad, want_grad, rtol=1e-8, atol=1e-12)


def test_pair_margin_miner_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(11)
    embeddings = torch.randn(len(CHARS), 3, generator=gen, dtype=torch.float64)
    criterion = SequencePairLoss(0.0, 1.0, miner="pair_margin", miner_pos_margin=0.6, miner_neg_margin=0.9)
    loss = criterion(embeddings, CHARS, SEQUENCES, SERIES)
    want = brute_force_loss(embeddings, CHARS, SEQUENCES, SERIES, 0.0, 1.0, miner_margins=(0.6, 0.9))
    unmined = brute_force_loss(embeddings, CHARS, SEQUENCES, SERIES, 0.0, 1.0)
    assert want.item() != pytest.approx(unmined.item())  # the miner changes the pair set here
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)


def test_batch_without_labelled_pairs_is_zero() -> None:
    # One instance per sequence, all in one series: no pair is labelled.
    embeddings = torch.randn(3, 4, requires_grad=True)
    loss = SequencePairLoss()(embeddings, torch.zeros(3, dtype=torch.long), torch.arange(3), torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0


def test_rejects_unknown_miner() -> None:
    with pytest.raises(ValueError, match="miner"):
        SequencePairLoss(miner="hard")
