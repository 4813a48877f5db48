"""SamplingParams validation and the logits -> token step, on hand-made logits (no model)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hearth.engine.sampling import Sampler, SamplingParams, apply_penalties, filter_logits
from hearth.errors import HearthError

# probabilities 0.5, 0.3, 0.15, 0.05 (sorted order is the index order)
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = PROBS.log()


def survivors(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits.tolist()) if v != float("-inf")}


# ---------------------------------------------------------------- validation


BAD = [
    ("max_tokens", -1),
    ("max_tokens", 1.5),
    ("temperature", -0.1),
    ("temperature", 100.5),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("top_k", -1),
    ("top_k", 2.5),
    ("top_p", 1.5),
    ("top_p", -0.2),
    ("top_p", math.nan),
    ("min_p", -0.1),
    ("min_p", 1.01),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.inf),
    ("presence_penalty", 2.5),
    ("presence_penalty", -3.0),
    ("frequency_penalty", 2.01),
    ("frequency_penalty", math.nan),
    ("seed", -1),
    ("seed", 2**63),
    ("stop", ("",)),
    ("stop", ("ok", 3)),
    ("logit_bias", ((-1, 1.0),)),
    ("logit_bias", ((3, 100.5),)),
    ("logit_bias", ((3, math.nan),)),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_value_raises_hearth_error_naming_the_field(field, value):
    with pytest.raises(HearthError) as exc:
        SamplingParams(**{field: value})
    msg = str(exc.value)
    assert msg.startswith(f"invalid {field}"), msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_tokens=0),
        dict(temperature=0.0),
        dict(temperature=100.0),
        dict(top_k=0),
        dict(top_p=1.0),
        dict(top_p=1e-6),
        dict(min_p=0.0),
        dict(min_p=1.0),
        dict(repetition_penalty=0.5),
        dict(presence_penalty=-2.0, frequency_penalty=2.0),
        dict(seed=0),
        dict(seed=2**63 - 1),
        dict(stop=("\n", "END")),
    ],
)
def test_edge_values_are_accepted(kwargs):
    SamplingParams(**kwargs)


def test_greedy_property():
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams(temperature=0.01).greedy


# ---------------------------------------------------------------- greedy and seeds


def test_greedy_is_argmax_whatever_the_seed_and_filters():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        logits = torch.randn(50, generator=g)
        expected = int(torch.argmax(logits))
        for seed in (None, 1, 2):
            s = Sampler(SamplingParams(temperature=0, seed=seed, top_k=3, top_p=0.5, min_p=0.3))
            assert s(logits, torch.tensor([], dtype=torch.long)) == expected


def test_greedy_accepts_bf16_logits():
    logits = torch.tensor([0.0, 5.0, 1.0], dtype=torch.bfloat16)
    assert Sampler(SamplingParams(temperature=0))(logits, torch.tensor([0])) == 1


def _draws(params: SamplingParams, logits: torch.Tensor, n: int) -> list[int]:
    s = Sampler(params)
    ctx = torch.tensor([], dtype=torch.long)
    return [s(logits, ctx) for _ in range(n)]


def test_same_seed_same_draws_different_seed_different_draws():
    logits = torch.zeros(100)  # uniform over 100 tokens: a sequence of 50 draws identifies the stream
    a = _draws(SamplingParams(temperature=1.0, seed=123), logits, 50)
    b = _draws(SamplingParams(temperature=1.0, seed=123), logits, 50)
    c = _draws(SamplingParams(temperature=1.0, seed=124), logits, 50)
    assert a == b
    assert a != c
    assert len(set(a)) > 10  # really sampling, not stuck on one token


def test_unseeded_samplers_differ():
    logits = torch.zeros(1000)
    a = _draws(SamplingParams(temperature=1.0), logits, 20)
    b = _draws(SamplingParams(temperature=1.0), logits, 20)
    assert a != b


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize("k,expected", [(1, {0}), (2, {0, 1}), (3, {0, 1, 2}), (4, {0, 1, 2, 3}), (0, {0, 1, 2, 3}), (10, {0, 1, 2, 3})])
def test_top_k_exact_survivors(k, expected):
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_k=k))
    assert survivors(out) == expected


def test_top_k_works_on_unsorted_logits():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5])
    assert survivors(filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))) == {1, 3}


@pytest.mark.parametrize(
    "p,expected",
    [
        (0.45, {0}),  # the top token alone reaches 0.45
        (0.7, {0, 1}),  # 0.5 < 0.7 <= 0.8
        (0.9, {0, 1, 2}),  # 0.8 < 0.9 <= 0.95
        (0.99, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=p))
    assert survivors(out) == expected


def test_top_p_on_shuffled_logits():
    perm = torch.tensor([2, 0, 3, 1])  # position i holds token perm[i]'s logit
    logits = LOGITS[perm]
    out = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.7))
    # tokens 0 and 1 (probs 0.5, 0.3) sit at positions 1 and 3
    assert survivors(out) == {1, 3}


@pytest.mark.parametrize(
    "min_p,expected",
    [(0.05, {0, 1, 2, 3}), (0.25, {0, 1, 2}), (0.5, {0, 1}), (0.7, {0}), (1.0, {0})],
)
def test_min_p_exact_survivors(min_p, expected):
    # threshold is min_p * 0.5 (the top probability)
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, min_p=min_p))
    assert survivors(out) == expected


def test_temperature_is_applied_before_top_p():
    # at T=1, top_p=0.7 keeps {0, 1}; at T=3 the distribution flattens and needs three tokens
    cold = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    hot = filter_logits(LOGITS, SamplingParams(temperature=3.0, top_p=0.7))
    assert survivors(cold) == {0, 1}
    assert survivors(hot) == {0, 1, 2}


def test_filters_combine():
    # top_k=3 drops 3; min_p=0.5 drops 2 (0.15 < 0.25)
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_k=3, min_p=0.5))
    assert survivors(out) == {0, 1}


def test_sampler_only_draws_survivors():
    logits = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    for params, allowed in [
        (SamplingParams(temperature=1.0, top_k=2, seed=5), {0, 1}),
        (SamplingParams(temperature=1.0, min_p=0.85, seed=5), {0, 1}),  # e^-0.1=0.905, e^-0.2=0.819
        (SamplingParams(temperature=1.0, top_p=0.3, seed=5), {0, 1}),  # p0 = 0.21 < 0.3 <= p0 + p1 = 0.40
    ]:
        drawn = set(_draws(params, logits, 300))
        assert drawn == allowed, (params, drawn)


# ---------------------------------------------------------------- penalties


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    ctx = torch.tensor([0, 1, 1])
    out = apply_penalties(logits, ctx, SamplingParams(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # input untouched


def test_presence_and_frequency_penalties():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    ctx = torch.tensor([0, 1, 1])  # counts 1, 2, 0, 0
    out = apply_penalties(logits, ctx, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    assert torch.allclose(out, torch.tensor([2.0 - 0.25 - 0.5, -1.0 - 0.5 - 0.5, 0.5, 3.0]))
    neg = apply_penalties(logits, ctx, SamplingParams(presence_penalty=-1.0))
    assert torch.allclose(neg, torch.tensor([3.0, 0.0, 0.5, 3.0]))


def test_penalties_combine_repetition_first():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    ctx = torch.tensor([0, 1, 1])
    out = apply_penalties(logits, ctx, SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0))
    assert torch.allclose(out, torch.tensor([1.0 - 1.0, -2.0 - 2.0, 0.5, 3.0]))


def test_no_penalty_or_empty_context_is_identity():
    logits = torch.tensor([2.0, -1.0, 0.5])
    assert torch.equal(apply_penalties(logits, torch.tensor([0, 1]), SamplingParams()), logits)
    empty = torch.tensor([], dtype=torch.long)
    assert torch.equal(apply_penalties(logits, empty, SamplingParams(repetition_penalty=3.0, presence_penalty=1.0)), logits)


def test_repetition_penalty_changes_greedy_choice():
    logits = torch.tensor([3.0, 2.9, 0.0])
    ctx = torch.tensor([0])
    assert Sampler(SamplingParams(temperature=0))(logits, ctx) == 0
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=1.5))(logits, ctx) == 1
    assert Sampler(SamplingParams(temperature=0, presence_penalty=0.2))(logits, ctx) == 1


def test_logit_bias_bans_forces_and_shifts_before_the_draw():
    logits = torch.tensor([3.0, 2.9, 0.0, -1.0])
    ctx = torch.tensor([], dtype=torch.long)
    assert Sampler(SamplingParams(temperature=0, logit_bias=((0, -100.0),)))(logits, ctx) == 1
    assert Sampler(SamplingParams(temperature=0, logit_bias=((3, 4.5),)))(logits, ctx) == 3
    # -100 on the likeliest token: at temperature 1 it is (all but) never drawn; +100 on one: always
    assert 0 not in _draws(SamplingParams(temperature=1.0, seed=7, logit_bias=((0, -100.0),)), logits, 300)
    assert set(_draws(SamplingParams(temperature=1.5, seed=7, logit_bias=((2, 100.0),)), logits, 300)) == {2}
    # a bias of log(2) doubles a token's odds: the frequencies follow softmax(logits + bias)
    bias = ((1, math.log(2.0)),)
    freq = torch.bincount(torch.tensor(_draws(SamplingParams(temperature=1.0, seed=3, logit_bias=bias), logits, 3000)),
                          minlength=4).float() / 3000
    expected = (logits + torch.tensor([0, math.log(2.0), 0, 0])).softmax(-1)
    assert torch.allclose(freq, expected, atol=0.04), (freq, expected)
    assert torch.equal(logits, torch.tensor([3.0, 2.9, 0.0, -1.0]))  # the caller's logits are not changed
    with pytest.raises(HearthError, match="outside the vocabulary"):
        Sampler(SamplingParams(temperature=0, logit_bias=((4, 1.0),)))(logits, ctx)


# ---------------------------------------------------------------- temperature, statistically


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draw_frequencies_follow_softmax_of_logits_over_temperature(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0])
    n = 2000
    draws = _draws(SamplingParams(temperature=temperature, seed=1234), logits, n)
    freq = torch.bincount(torch.tensor(draws), minlength=3).float() / n
    expected = (logits / temperature).softmax(-1)
    # binomial sd <= sqrt(0.25/2000) ~ 0.011; 0.045 is four of them
    assert torch.allclose(freq, expected, atol=0.045), (freq, expected)


def test_higher_temperature_flattens_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0])
    top = {}
    for t in (0.3, 1.0, 5.0):
        draws = _draws(SamplingParams(temperature=t, seed=7), logits, 2000)
        top[t] = draws.count(0) / 2000
    assert top[0.3] > 0.9
    assert top[0.3] > top[1.0] > top[5.0]
    assert top[5.0] < 0.5


@pytest.mark.parametrize("params", [
    dict(top_p=0.9), dict(top_p=0.5, min_p=0.1), dict(top_k=40), dict(top_k=40, top_p=0.95, min_p=0.05),
    dict(min_p=0.2), dict(), dict(top_k=3000, top_p=0.99),
])
@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])  # flat (the nucleus spans most of the vocabulary) to peaked
def test_candidate_probs_are_filter_logits_distribution(params, scale):
    """The sampler's fast path keeps the same tokens with the same probabilities as filter_logits + softmax."""
    from hearth.engine.sampling import candidate_probs

    g = torch.Generator().manual_seed(3)
    for v in (50, 5000):
        logits = torch.randn(v, generator=g) * scale
        p = SamplingParams(temperature=0.7, **params)
        ref = filter_logits(logits, p).softmax(-1)
        idx, probs = candidate_probs(logits, p, candidates=64)  # few candidates: the fallback sort runs too
        got = torch.zeros(v).scatter(0, idx, probs) if idx is not None else probs.clone()
        torch.testing.assert_close(got / got.sum(), ref, rtol=1e-4, atol=1e-6)


def test_sampling_follows_the_filtered_distribution():
    """Draws from the fast path land on the kept tokens in proportion to their probabilities."""
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.0, -1.0] + [-4.0] * 200)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    ref = filter_logits(logits, p).softmax(-1)
    s = Sampler(p)
    draws = torch.bincount(torch.tensor([s(logits, torch.tensor([], dtype=torch.long)) for _ in range(4000)]),
                           minlength=logits.numel()).float() / 4000
    assert set(draws.nonzero().flatten().tolist()) <= set(ref.nonzero().flatten().tolist())
    torch.testing.assert_close(draws, ref, atol=0.03, rtol=0)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1e-45, top_k=0, top_p=1.0, min_p=0.0),  # logits / T would overflow to inf and NaN
    SamplingParams(temperature=1e-300),
    SamplingParams(temperature=1.0, top_k=40, top_p=1e-300),  # below fp32's smallest number: rounds to 0
    SamplingParams(temperature=1.0, top_k=0, top_p=0.0),  # llama.cpp's meaning: only the best token
    SamplingParams(temperature=1.0, top_k=0, top_p=1e-300),
])
def test_extreme_settings_pick_the_best_token(params):
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    best = int(logits.argmax())
    sampler = Sampler(dataclasses.replace(params, seed=1))
    assert all(sampler(logits, torch.empty(0, dtype=torch.long)) == best for _ in range(20))
    if not params.greedy:  # the reference filter keeps exactly the best token too
        assert survivors(filter_logits(logits, params)) == {best}


def test_broken_logits_still_give_a_token():
    """NaN logits (a broken adapter) must not crash the draw or return an id outside the vocabulary."""
    logits = torch.full((100,), float("nan"))
    tok = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=0))(logits, torch.empty(0, dtype=torch.long))
    assert 0 <= tok < 100
