"""LoRA on the top blocks over cached frozen states, shared prefixes run once (hearth/tune/top_layers.py), against the
plain training forward (hearth.tune.forward.lm_loss_sum on collated rows): the same loss and the same gradient of
every LoRA parameter, in fp32, on a tiny random 4-block Llama with its adapter on the top blocks."""

from __future__ import annotations

import random

import pytest
import torch

import tiny
from hearth.tune.data import Example, collate
from hearth.tune.forward import lm_loss_sum
from hearth.tune.objectives import SFT
from hearth.tune.lora import adapters_disabled, apply_lora, lora_modules
from hearth.tune.top_layers import MIN_SHARED, TopSFT, _prefix_groups, cache_states, top_loss_sum
from hearth.tune.train import TrainConfig, train
from hearth.weights.adapters.targets import LoraConfig

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 97
N_LAYERS = 4


def _tokens(rng: random.Random, n: int, lo: int = 3) -> list[int]:
    return [rng.randrange(lo, VOCAB) for _ in range(n)]


def _examples() -> tuple[list[Example], dict[str, list[int]]]:
    """Two prefix groups (two 'roles': different openings of 70 and 80 tokens), a group whose shared opening runs
    past a learned position, and a singleton; answers of different lengths. Returns them and the indices of each
    intended group."""
    rng = random.Random(0)
    opening = {"user": _tokens(rng, 70), "assistant": _tokens(rng, 80)}
    out, groups = [], {"user": [], "assistant": [], "early": [], "single": []}
    for k, role in enumerate(["user", "assistant"] * 4):
        question = [3 + k] + _tokens(rng, 2 + 3 * k)  # a distinct first token: the group's prefix is the opening
        answer = _tokens(rng, 1 + k % 3)
        ids = opening[role] + question + answer + [1]
        groups[role].append(len(out))
        out.append(Example(ids, [False] * (len(ids) - len(answer) - 1) + [True] * (len(answer) + 1), len(out)))
    shared = _tokens(rng, 90)  # 90 shared tokens, but one example learns its token 50: the prefix stops at 49
    for k, learned_from in enumerate((50, 92)):
        ids = shared + [20 + k] + _tokens(rng, 6)
        groups["early"].append(len(out))
        out.append(Example(ids, [i >= learned_from for i in range(len(ids))], len(out)))
    ids = _tokens(rng, 23)
    groups["single"].append(len(out))
    out.append(Example(ids, [i >= 15 for i in range(len(ids))], len(out)))
    return out, groups


def _model(first: int):
    torch.manual_seed(0)
    model = tiny.random_transformer(seed=1, norm_std=0.2, vocab_size=VOCAB, n_layers=N_LAYERS)
    apply_lora(model, LoraConfig(r=4, alpha=8, layers=tuple(range(first, N_LAYERS))))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in lora_modules(model).values():  # B = 0 would make the adapter, and its A gradient, vanish
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)
    return model


def _lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def test_prefix_groups_stop_before_the_first_learned_position():
    examples, groups = _examples()
    got = {tuple(sorted(idx)): p for p, idx in _prefix_groups(examples)}
    assert got == {
        tuple(groups["user"]): 70,  # the opening, not further (each question starts with its own token)
        tuple(groups["assistant"]): 80,
        tuple(groups["early"]): 49,  # token 50 is learned from position 49: the prefix stops before it
        tuple(groups["single"]): 14,  # a lone example is its own group; its prefix ends before its first target
    }
    assert MIN_SHARED <= 70


def test_prefix_never_takes_an_examples_last_input():
    """A group whose examples are the shared tokens plus one: each keeps one input position of its own."""
    base = list(range(3, 3 + MIN_SHARED + 4))
    examples = [Example(base + [t], [False] * len(base) + [True]) for t in (5, 6, 7)]
    [(p, idx)] = _prefix_groups(examples)
    assert sorted(idx) == [0, 1, 2] and p == len(base) - 1


@pytest.mark.parametrize("first", [2, 3])
@pytest.mark.parametrize("batch_tokens", [4096, 24], ids=["one-batch", "many-batches"])
def test_loss_and_gradients_equal_the_full_forward(first, batch_tokens):
    examples, groups = _examples()
    model = _model(first)
    model.train()  # (no dropout: train mode must not change the numbers either way)

    b = collate([[ex] for ex in examples], packed=False)
    want, want_n = lm_loss_sum(model, b.tokens, b.targets)
    want.backward()
    want_grads = _lora_grads(model)
    with torch.no_grad(), adapters_disabled(model):
        plain, _ = lm_loss_sum(model, b.tokens, b.targets)
    assert abs(float(plain) - want.item()) > 1e-2  # the adapter matters

    cached = cache_states(model, examples, first, batch_tokens=batch_tokens, dtype=torch.float32)
    # the opening of a group is cached once, shared by every example of the group
    for role, p in (("user", 70), ("assistant", 80)):
        prefixes = {id(cached[i].prefix) for i in groups[role]}
        assert len(prefixes) == 1 and len(cached[groups[role][0]].prefix.ids) == p
    for ex, c in zip(examples, cached):
        assert c.ids == ex.ids and c.mask == ex.mask and c.line == ex.line
        assert c.states.shape == (len(ex.ids) - 1 - len(c.prefix.ids), model.config.dim)

    random.Random(3).shuffle(cached)  # a micro-batch in any order, groups interleaved
    got, got_n = top_loss_sum(model, first, cached)
    got.backward()
    got_grads = _lora_grads(model)
    assert got_n == want_n == sum(ex.n_targets for ex in examples)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert set(got_grads) == set(want_grads)
    assert {int(n.split(".")[1]) for n in got_grads} == set(range(first, N_LAYERS))
    for name, g in want_grads.items():
        assert g.abs().max() > 0, name  # every LoRA parameter has a gradient to compare
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_top_sft_objective_sums_counts_and_eval_is_the_mean():
    examples, _ = _examples()
    first = 2
    model = _model(first)
    cached = cache_states(model, examples, first, dtype=torch.float32)
    obj = TopSFT(first)
    rows = [[c] for c in cached]
    assert obj.count(rows) == sum(ex.n_targets for ex in examples)
    loss, tokens = obj.loss(model, rows)
    assert tokens == sum(len(ex.ids) - 1 for ex in examples)
    b = collate(rows, packed=False)
    with torch.no_grad():
        want, n = lm_loss_sum(model, b.tokens, b.targets)
    assert obj.eval_loss(model, cached, batch_size=3) == pytest.approx(float(want) / n, rel=1e-5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_train_with_top_sft_lowers_the_loss_as_plain_sft_does(tmp_path):
    """hearth.tune.train with TopSFT over the cached states takes the steps that SFT over the whole model takes."""
    examples, _ = _examples()
    first = 2
    cfg = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, layers=(2, 3)), lr=2e-2, max_steps=30,
                      batch_size=len(examples), warmup_steps=0, val_fraction=0.0, save_every=100)
    model = _model(first)
    cached = cache_states(model, examples, first, dtype=torch.float32)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    obj = TopSFT(first)
    before = obj.eval_loss(model, cached, 4)
    result = train(model, obj, cached, cached[:4], cfg, tmp_path / "top", progress=False)
    assert result.steps == 30 and len(result.history) == 30
    after = obj.eval_loss(model, cached, 4)
    assert after < 0.4 * before, (before, after)
    assert result.val_loss == pytest.approx(obj.eval_loss(model, cached[:4], 4), rel=1e-5)
    for n, p in model.named_parameters():  # only the adapter trained
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n

    plain = train(_model(first), SFT("cpu"), examples, examples[:4], cfg, tmp_path / "sft", progress=False)
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-4)
