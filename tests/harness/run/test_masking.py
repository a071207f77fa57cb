"""The masked-token objective of self-pretraining (``harness.run.masking``): which positions are chosen (token
and span masking, their rates), what the model sees in their place (BERT's corruption), and the loss over
them. Rates are checked against binomial bounds (5 standard deviations) over many draws."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.harness.run.masking import choose, corrupt, masked_token_loss


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_candidates(shape, seed: int, share: float = 0.7) -> torch.Tensor:
    return torch.rand(shape, generator=gen(seed)) < share


def within(count: float, n: int, p: float, spread: float = 1.0) -> bool:
    """``count`` successes of ``n`` trials at probability ``p`` within 5 standard deviations (``spread``: a
    factor on the variance, for correlated trials)."""
    return abs(count - n * p) <= 5 * math.sqrt(spread * n * p * (1 - p))


# ---------------------------------------------------------------- choose

@pytest.mark.parametrize("span_length", [1, 2, 3, 5])
@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
def test_choose_picks_candidates_only(rate, span_length):
    candidates = random_candidates((16, 64), seed=1)
    chosen = choose(candidates, rate, span_length, gen(2))
    assert chosen.shape == candidates.shape and chosen.dtype == torch.bool
    assert not (chosen & ~candidates).any()
    assert chosen.any()


@pytest.mark.parametrize("span_length", [1, 3])
def test_rate_1_chooses_every_candidate(span_length):
    candidates = random_candidates((8, 50), seed=3)
    assert torch.equal(choose(candidates, 1.0, span_length, gen(4)), candidates)


@pytest.mark.parametrize("rate", [0.1, 0.15, 0.5])
def test_token_masking_rate(rate):
    candidates = random_candidates((200, 300), seed=5)
    chosen = choose(candidates, rate, 1, gen(6))
    n = int(candidates.sum())
    assert within(int(chosen.sum()), n, rate)


def test_draws_follow_the_generator():
    candidates = random_candidates((4, 40), seed=7)
    assert torch.equal(choose(candidates, 0.3, 3, gen(8)), choose(candidates, 0.3, 3, gen(8)))
    assert not torch.equal(choose(candidates, 0.3, 3, gen(8)), choose(candidates, 0.3, 3, gen(9)))
    torch.manual_seed(10)  # no generator: torch's global one (the run's seeded one)
    first = choose(candidates, 0.3, 1)
    torch.manual_seed(10)
    assert torch.equal(choose(candidates, 0.3, 1), first)


@pytest.mark.parametrize("span_length", [2, 3, 4])
def test_span_masking_covers_span_length_tokens_from_each_start(span_length):
    """On a seeded draw the starts are known (the documented start probability on the same uniform draws): each
    position is chosen exactly when a span started at one of the ``span_length`` positions ending at it."""
    rate, seed = 0.3, 11
    candidates = random_candidates((6, 40), seed=12, share=0.85)
    chosen = choose(candidates, rate, span_length, gen(seed))
    draw = torch.rand(candidates.shape, generator=gen(seed))
    starts = (draw < 1 - (1 - rate) ** (1 / span_length)) & candidates
    assert starts.any()
    expected = torch.zeros_like(candidates)
    for b in range(candidates.shape[0]):
        for i in range(candidates.shape[1]):
            if starts[b, i]:
                expected[b, i: i + span_length] = True  # the span, cut at the sequence's end
    assert torch.equal(chosen, expected & candidates)


def test_span_masking_chooses_runs_of_at_least_span_length():
    span_length = 4
    candidates = torch.ones(50, 80, dtype=torch.bool)
    chosen = choose(candidates, 0.2, span_length, gen(13))
    runs = 0
    for row in chosen.tolist():
        i = 0
        while i < len(row):
            if row[i]:
                j = i
                while j < len(row) and row[j]:
                    j += 1
                if j < len(row):  # a run cut by the sequence's end may be shorter
                    assert j - i >= span_length, (row, i, j)
                    runs += 1
                i = j
            else:
                i += 1
    assert runs > 100


@pytest.mark.parametrize("span_length", [2, 3, 5])
@pytest.mark.parametrize("rate", [0.15, 0.5])
def test_span_masking_rate(rate, span_length):
    """A candidate with span_length - 1 candidates before it is chosen with probability ``rate`` (checked on
    those, with the variance bound of indicators correlated over span_length - 1 neighbours each side); over
    every candidate, about ``rate``."""
    candidates = torch.ones(100, 400, dtype=torch.bool)
    chosen = choose(candidates, rate, span_length, gen(14))
    inner = chosen[:, span_length - 1:]
    assert within(int(inner.sum()), inner.numel(), rate, spread=2 * span_length - 1)
    assert abs(chosen.float().mean().item() - rate) < 0.02


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01, float("nan")])
def test_invalid_rate_is_refused(rate):
    with pytest.raises(ValueError, match="masking rate"):
        choose(torch.ones(2, 5, dtype=torch.bool), rate)


@pytest.mark.parametrize("span_length", [0, -2])
def test_invalid_span_length_is_refused(span_length):
    with pytest.raises(ValueError, match="at least 1 token"):
        choose(torch.ones(2, 5, dtype=torch.bool), 0.5, span_length)


# ---------------------------------------------------------------- corrupt

VOCAB = 12


def tokens_and_choice(pad_id: int = 0, shape=(64, 50), seed: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of real ids (never ``pad_id``) with padding at each row's end, and a random choice among the
    real ones."""
    ids = torch.tensor([i for i in range(VOCAB) if i != pad_id])
    tokens = ids[torch.randint(0, len(ids), shape, generator=gen(seed))]
    lengths = torch.randint(shape[1] // 2, shape[1] + 1, (shape[0], 1), generator=gen(seed + 1))
    padding = torch.arange(shape[1]) >= lengths
    tokens[padding] = pad_id
    chosen = (torch.rand(shape, generator=gen(seed + 2)) < 0.4) & ~padding
    return tokens, chosen


@pytest.mark.parametrize("mask_token, random_token", [(0.8, 0.1), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.3, 0.7)])
def test_unchosen_positions_are_unchanged(mask_token, random_token):
    tokens, chosen = tokens_and_choice()
    out = corrupt(tokens, chosen, VOCAB, VOCAB, mask_token, random_token, generator=gen(21))
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert torch.equal(out[~chosen], tokens[~chosen])
    if mask_token == random_token == 0.0:
        assert torch.equal(out, tokens)


def test_mask_token_1_masks_every_chosen_position():
    tokens, chosen = tokens_and_choice()
    out = corrupt(tokens, chosen, VOCAB, VOCAB, mask_token=1.0, random_token=0.0, generator=gen(22))
    assert (out[chosen] == VOCAB).all() and (out[~chosen] != VOCAB).all()


@pytest.mark.parametrize("pad_id", [0, 5, VOCAB - 1])
def test_random_tokens_are_real_ids_never_padding(pad_id):
    tokens, chosen = tokens_and_choice(pad_id, shape=(200, 60))
    out = corrupt(tokens, chosen, VOCAB, VOCAB, mask_token=0.0, random_token=1.0, pad_id=pad_id, generator=gen(23))
    drawn = out[chosen]
    assert ((drawn >= 0) & (drawn < VOCAB)).all()  # never [MASK] (= VOCAB), which is past the vocabulary
    assert not (drawn == pad_id).any()
    # uniform over the VOCAB - 1 ids other than padding
    counts = torch.bincount(drawn, minlength=VOCAB)
    for token in range(VOCAB):
        if token != pad_id:
            assert within(int(counts[token]), drawn.numel(), 1 / (VOCAB - 1)), (token, counts.tolist())


def test_corruption_shares():
    """Of the chosen tokens about mask_token become [MASK]; random_token are drawn anew (keeping their own id
    with probability 1/(VOCAB - 1)); the rest keep theirs."""
    mask_token, random_token = 0.6, 0.25
    tokens, chosen = tokens_and_choice(shape=(300, 60))
    out = corrupt(tokens, chosen, VOCAB, VOCAB, mask_token, random_token, generator=gen(24))
    n = int(chosen.sum())
    before, after = tokens[chosen], out[chosen]
    masked = int((after == VOCAB).sum())
    replaced = int(((after != VOCAB) & (after != before)).sum())
    kept = int((after == before).sum())
    assert masked + replaced + kept == n
    assert within(masked, n, mask_token)
    assert within(replaced, n, random_token * (1 - 1 / (VOCAB - 1)))
    assert within(kept, n, 1 - mask_token - random_token + random_token / (VOCAB - 1))


@pytest.mark.parametrize("mask_token, random_token", [(-0.1, 0.1), (0.5, -0.01), (0.8, 0.3), (1.0, 0.01)])
def test_invalid_shares_are_refused(mask_token, random_token):
    tokens, chosen = tokens_and_choice()
    with pytest.raises(ValueError, match="fractions of the chosen tokens"):
        corrupt(tokens, chosen, VOCAB, VOCAB, mask_token, random_token)


def test_a_vocabulary_without_a_real_token_is_refused():
    tokens = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no real token"):
        corrupt(tokens, tokens == 0, 1, 1)


# ---------------------------------------------------------------- the loss

def test_loss_is_the_mean_cross_entropy_over_the_chosen_positions():
    b, n, v = 5, 9, 7
    logits = torch.randn(b, n, v, generator=gen(30), dtype=torch.float64) * 2
    targets = torch.randint(0, v, (b, n), generator=gen(31))
    chosen = torch.rand(b, n, generator=gen(32)) < 0.3
    assert 0 < int(chosen.sum()) < b * n
    by_hand = -torch.stack([torch.log_softmax(logits[i, j], -1)[targets[i, j]]
                            for i in range(b) for j in range(n) if chosen[i, j]]).mean()
    loss = masked_token_loss(logits, targets, chosen)
    torch.testing.assert_close(loss.double(), by_hand, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss.double(), F.cross_entropy(logits[chosen], targets[chosen]), rtol=1e-6, atol=0)
    # what the unchosen positions hold does not count
    other = logits.clone()
    other[~chosen] = torch.randn(int((~chosen).sum()), v, generator=gen(33), dtype=torch.float64) * 50
    torch.testing.assert_close(masked_token_loss(other, targets, chosen), loss, rtol=0, atol=0)


def test_loss_without_a_chosen_position_is_zero_with_zero_gradient():
    logits = torch.randn(3, 4, 6, generator=gen(34), requires_grad=True)
    targets = torch.randint(0, 6, (3, 4), generator=gen(35))
    loss = masked_token_loss(logits, targets, torch.zeros(3, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
