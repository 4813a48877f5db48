"""The pre-flight memory estimate follows the data actually drawn (not --batch-size × --max-len), counts DPO's
chosen and rejected rows, and its refusal names the options that matter for the run, with numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tune_kit
from hearth.errors import HearthError
from hearth.loader import load
from hearth.tune import data as D
from hearth.tune.lora import LoraConfig, apply_lora
from hearth.tune.memory import GiB, SLACK, check_memory, estimate, largest_micro_batch
from hearth.tune.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mdir(tmp_path_factory):
    return tune_kit.model_dir(str(tmp_path_factory.mktemp("mem_model")))


@pytest.fixture(scope="module")
def lm(mdir):
    lm = load(str(mdir), dtype="float32")
    torch.manual_seed(0)
    apply_lora(lm.model, LoraConfig(r=4))
    return lm


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return tune_kit.write_jsonl(tmp_path_factory.mktemp("mem") / "chat.jsonl", tune_kit.chat_records(30))


def _items(lm, path, kind="sft", max_len=1024):
    return D.load_dataset(path, lm.tokenizer, lm.chat_template, kind, max_len).items


def test_the_shape_is_the_largest_batch_the_loop_draws_whatever_max_len(lm, chats):
    for pack in (False, True):
        cfg = TrainConfig(max_steps=12, batch_size=4, grad_accum=2, pack=pack, max_len=1024)
        items = _items(lm, chats)
        shape = largest_micro_batch(items, cfg)
        stream = D.BatchStream(items, cfg.batch_size, cfg.max_len, pack, cfg.seed)
        drawn = [stream[k] for k in range(12 * 2)]
        assert shape.tokens == max(b.tokens.numel() for b in drawn)
        assert shape.targets == max(b.n_targets for b in drawn)
        if not pack:  # short chats: as wide as the longest, nowhere near --max-len, however large
            assert shape.width == max(len(ex.ids) - 1 for ex in items) < 100 and shape.rows == 4
            wide = dataclasses.replace(cfg, max_len=4096)
            assert largest_micro_batch(_items(lm, chats, max_len=4096), wide) == shape
    a = estimate(lm.model, largest_micro_batch(items, TrainConfig(batch_size=4, max_len=128)), False, torch.device("cpu"))
    b = estimate(lm.model, largest_micro_batch(items, TrainConfig(batch_size=4, max_len=8192)), False, torch.device("cpu"))
    assert a.needed == b.needed


def test_dpo_counts_chosen_and_rejected_and_no_second_copy_of_logits(lm, tmp_path):
    pairs = [{"prompt": f"Which word is number {i}?", "chosen": "blue " * (i % 5 + 1), "rejected": "stone"} for i in range(12)]
    items = _items(lm, tune_kit.write_jsonl(tmp_path / "p.jsonl", pairs), "dpo")
    cfg = TrainConfig(method="dpo", batch_size=3, max_steps=4)
    shape = largest_micro_batch(items, cfg)
    assert shape.rows == 6
    widest = max(len(e.ids) - 1 for p in items for e in (p.chosen, p.rejected))
    assert shape.width <= widest
    top = sorted((p.chosen.n_targets + p.rejected.n_targets for p in items), reverse=True)
    assert shape.targets <= sum(top[:3])
    sft, dpo = (estimate(lm.model, shape, False, torch.device("cpu"), o) for o in ("sft", "dpo"))
    assert dpo.logits == sft.logits == shape.targets * lm.model.config.vocab_size * 4 * 3


def _refusal(lm, shape, cfg, fraction, objective="sft", limit=None):
    est = estimate(lm.model, shape, cfg.grad_checkpointing, torch.device("cpu"), objective)
    with pytest.raises(HearthError) as e:
        check_memory(lm.model, shape, cfg, torch.device("cpu"), objective, limit_bytes=limit,
                     available=int(est.needed * fraction))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training would need about")
    return msg


def test_the_refusal_names_what_matters_for_the_method(lm, chats):
    items = _items(lm, chats)
    cfg = TrainConfig(method="lora", batch_size=8, grad_accum=2, max_steps=4)
    shape = largest_micro_batch(items, cfg)
    msg = _refusal(lm, shape, cfg, 0.8)  # 2 layers: checkpointing saves less than on a deep model
    assert "--method" not in msg and "qlora" not in msg  # already LoRA: the frozen base is not the problem
    bs = int(msg.split("--batch-size ")[1].split()[0])
    assert 1 <= bs < 8 and f"--grad-accum {-(-16 // bs)} to keep about 16 per step" in msg
    assert "--grad-checkpointing (about" in msg and "--memory-limit" not in msg
    # the suggested batch size fits: the same data with it passes the check
    small = dataclasses.replace(cfg, batch_size=bs)
    est = estimate(lm.model, shape, False, torch.device("cpu"))
    check_memory(lm.model, largest_micro_batch(items, small), small, torch.device("cpu"), available=int(est.needed * 0.8))
    # with checkpointing already on, it is not suggested again; a limit the user set is named
    gc = dataclasses.replace(cfg, grad_checkpointing=True)
    msg = _refusal(lm, shape, gc, 0.6, limit=int(estimate(lm.model, shape, True, torch.device("cpu")).needed * 0.6))
    assert "--grad-checkpointing" not in msg and "a higher --memory-limit" in msg and "--memory-limit is" in msg


def test_full_fine_tuning_whose_optimizer_dominates_suggests_lora(mdir, chats):
    full = load(str(mdir), dtype="float32")
    for p in full.model.parameters():
        p.requires_grad_(True)
    items = _items(full, chats)
    cfg = TrainConfig(method="full", batch_size=1, max_steps=1)
    shape = largest_micro_batch(items, cfg)
    est = estimate(full.model, shape, False, torch.device("cpu"))
    assert est.optimizer == 3 * 4 * sum(p.numel() for p in full.model.parameters())
    assert est.optimizer > est.activations + est.logits  # one short chat, every weight trained
    assert "--method lora" in _refusal(full, shape, cfg, 0.5)
    assert est.needed == int((est.optimizer + est.activations + est.logits) * SLACK) and est.needed < GiB
