"""hearth.tune on tiny random-weight models: the training forward, LoRA, data masks, the loop, exact resume,
QLoRA, DPO, distillation and bad inputs. Everything here is CPU, one thread, seconds."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

import tiny
import tune_kit
from hearth.errors import HearthError
from hearth.loader import load
from hearth.model import Transformer
from hearth.tune import data as D
from hearth.tune.checkpoint import checkpoint_path, load_checkpoint
from hearth.tune.forward import logits
from hearth.tune.lora import LoraConfig, adapters_disabled, apply_lora, dense_state_dict, lora_modules, merge_lora
from hearth.tune.objectives import SFT, Distill
from hearth.tune.quant import NF4Linear, dequantize_nf4, quantize_nf4
from hearth.tune.recipes import distill, tune
from hearth.tune.train import TrainConfig, lr_at, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mdir(tmp_path_factory):
    return tune_kit.model_dir(str(tmp_path_factory.mktemp("tune_model")))


@pytest.fixture
def lm(mdir):
    return load(str(mdir), dtype="float32")


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    return tune_kit.write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", tune_kit.chat_records(48))


def _rand_model(seed=0, **kw) -> Transformer:
    return tiny.random_transformer(seed, norm_std=0.2, **{"vocab_size": 300, **kw})


# ------------------------------------------------------------------------------- forward and LoRA

def test_training_forward_equals_inference_forward_and_packing_isolates_documents():
    m = _rand_model()
    a, b = torch.randint(0, 300, (1, 17)), torch.randint(0, 300, (1, 11))
    with torch.no_grad():
        assert torch.equal(logits(m, a), m(a))
        packed = torch.cat([a, b], dim=1)
        docs = torch.tensor([[0] * 17 + [1] * 11])
        out = logits(m, packed, docs)
        # each document sees only itself, from position 0: the same logits as alone
        torch.testing.assert_close(out[:, :17], m(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, 17:], m(b), atol=1e-5, rtol=0)
        assert not torch.allclose(logits(m, packed)[:, 17:], m(b), atol=1e-3)  # unmasked, b would see a


def test_lora_is_a_noop_at_init_and_merging_keeps_the_logits():
    m = _rand_model()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        base = m(x)
        wrapped = apply_lora(m, LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")))
        assert wrapped == [f"layers.{i}.{p}" for i in range(2) for p in ("attention.wq", "attention.wv", "feed_forward.w2")]
        assert torch.equal(m(x), base)  # B starts at zero
        for mod in lora_modules(m).values():
            mod.lora_B.weight.normal_(0, 0.05)
        adapted = m(x)
        assert (adapted - base).abs().max() > 1e-2
        with adapters_disabled(m):
            assert torch.equal(m(x), base)
        dense = dense_state_dict(m)
        assert set(dense) == set(_rand_model().state_dict())
        merge_lora(m)
        assert not lora_modules(m)
        torch.testing.assert_close(m(x), adapted, atol=1e-5, rtol=0)
    trainable = [n for n, p in _lora_model().named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def _lora_model():
    m = _rand_model()
    apply_lora(m, LoraConfig(r=2))
    return m


@pytest.mark.parametrize("kw, msg", [
    (dict(r=0), "rank must be positive"), (dict(targets=("q_proj", "qkv")), "unknown LoRA target"),
    (dict(dropout=1.0), "dropout"), (dict(alpha=-1), "alpha"),
])
def test_lora_config_rejects_bad_values(kw, msg):
    with pytest.raises(HearthError, match=msg):
        LoraConfig(**kw)


def test_applying_lora_twice_is_refused():
    m = _lora_model()
    with pytest.raises(HearthError, match="already carries a LoRA adapter"):
        apply_lora(m, LoraConfig())


# ------------------------------------------------------------------------------------------- data

def test_chat_mask_covers_exactly_the_assistant_turns(lm):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello you"}, {"role": "user", "content": "Name a river"},
            {"role": "assistant", "content": "The Nile"}]
    ex = D.encode_chat(lm.tokenizer, lm.chat_template, msgs)
    text = lm.chat_template.render(msgs, add_generation_prompt=False)
    assert ex.ids == lm.tokenizer.encode(text, add_bos=False)  # the ids of the rendered conversation, unchanged
    learned = [i if m else None for i, m in zip(ex.ids, ex.mask)]
    spans, cur = [], []
    for t in learned + [None]:
        if t is None and cur:
            spans.append(lm.tokenizer.decode(cur, skip_special=False))
            cur = []
        elif t is not None:
            cur.append(t)
    assert spans == ["Hello you<|im_end|>\n", "The Nile<|im_end|>\n"]


def test_prompt_completion_raw_learns_completion_and_eos(lm):
    ex = D.encode_completion(lm.tokenizer, lm.chat_template, "Question: sky?\nAnswer:", " blue", use_template=False)
    learned = [i for i, m in zip(ex.ids, ex.mask) if m]
    assert lm.tokenizer.decode(learned[:-1]) == " blue" and learned[-1] == lm.tokenizer.eos_ids[0]
    assert lm.tokenizer.decode([i for i, m in zip(ex.ids, ex.mask) if not m]) == "Question: sky?\nAnswer:"


def test_bad_lines_stop_with_line_number_or_are_skipped(lm, tmp_path, caplog):
    recs = tune_kit.chat_records(6)
    f = tune_kit.write_jsonl(tmp_path / "bad.jsonl", recs, {3: '{"messages": [', 5: '{"prompt": 1, "completion": "x"}'})
    with pytest.raises(HearthError, match=r"bad.jsonl:3: not valid JSON .*--on-bad-line skip"):
        D.load_dataset(f, lm.tokenizer, lm.chat_template)
    with caplog.at_level(logging.WARNING, logger="hearth"):
        ds = D.load_dataset(f, lm.tokenizer, lm.chat_template, on_bad_line="skip")
    assert len(ds.items) == 4 and [n for n, _ in ds.bad_lines] == [3, 5]
    assert "skipped 2 bad line(s): 3, 5" in caplog.text
    g = tune_kit.write_jsonl(tmp_path / "noassist.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] + recs[:1])
    with pytest.raises(HearthError, match=r"noassist.jsonl:1: no assistant message"):
        D.load_dataset(g, lm.tokenizer, lm.chat_template)


def test_empty_and_unusable_datasets_are_refused(lm, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(HearthError, match="empty dataset .*no records"):
        D.load_dataset(tmp_path / "empty.jsonl", lm.tokenizer, lm.chat_template)
    f = tune_kit.write_jsonl(tmp_path / "junk.jsonl", [[1, 2], "x"])
    with pytest.raises(HearthError, match="empty dataset .*no record was usable"):
        D.load_dataset(f, lm.tokenizer, lm.chat_template, on_bad_line="skip")
    with pytest.raises(HearthError, match="does not exist"):
        D.load_dataset(tmp_path / "nope.jsonl", lm.tokenizer, lm.chat_template)


def test_overlong_examples_truncate_or_drop_with_counts(lm, tmp_path, caplog):
    recs = tune_kit.chat_records(4) + [{"prompt": "tell " * 5, "completion": "a long answer " * 40}]
    f = tune_kit.write_jsonl(tmp_path / "long.jsonl", recs)
    short = max(len(e.ids) for e in D.load_dataset(f, lm.tokenizer, lm.chat_template).items[:4])
    with caplog.at_level(logging.WARNING, logger="hearth"):
        ds = D.load_dataset(f, lm.tokenizer, lm.chat_template, max_len=short + 5)
    assert ds.truncated == 1 and max(len(e.ids) for e in ds.items) == short + 5 and len(ds.items) == 5
    assert f"1 example(s) longer than {short + 5} tokens were truncated" in caplog.text
    ds = D.load_dataset(f, lm.tokenizer, lm.chat_template, max_len=short + 5, overlong="drop")
    assert ds.dropped == 1 and len(ds.items) == 4
    with pytest.raises(HearthError, match="every example is longer than --max-len 8 tokens; raise --max-len"):
        D.load_dataset(f, lm.tokenizer, lm.chat_template, max_len=8, overlong="drop")
    # truncating keeps the first max_len tokens: when the prompt alone fills them, nothing is left to learn
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hearth"), \
            pytest.raises(HearthError, match="longer than --max-len 8 tokens in its prompt; raise --max-len"):
        D.load_dataset(f, lm.tokenizer, lm.chat_template, max_len=8)
    assert "the prompt alone fills --max-len" in caplog.text


def test_packing_keeps_every_target_token(lm, chat_file):
    ds = D.load_dataset(chat_file, lm.tokenizer, lm.chat_template)
    plain = D.BatchStream(ds.items, 4, 128, False, 0)
    packed = D.BatchStream(ds.items, 2, 256, True, 0)
    count = lambda s: sum(D.collate(s.rows(k), s.packed).n_targets for k in range(s.micro_batches_per_epoch()))  # noqa: E731
    assert count(plain) == count(packed) == sum(e.n_targets for e in ds.items)
    assert packed.micro_batches_per_epoch() < plain.micro_batches_per_epoch()
    assert D.collate(packed.rows(0), True).tokens.shape[1] <= 256


# ------------------------------------------------------------------------------------------- loop

def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [lr_at(s, 20, cfg) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[20] == pytest.approx(0.1)


def _sft_run(lm, items, out, cfg, **kw):
    return train(lm.model, SFT("cpu", 0, cfg.pack), items, items[:4], cfg, out, progress=False, **kw)


def test_gradient_accumulation_and_checkpointing_do_not_change_the_step(mdir, chat_file, tmp_path):
    runs = []
    for i, (bs, acc, gc) in enumerate([(4, 1, False), (2, 2, False), (1, 4, True)]):
        lm = load(str(mdir), dtype="float32")
        torch.manual_seed(0)
        apply_lora(lm.model, LoraConfig(r=4))
        ds = D.load_dataset(chat_file, lm.tokenizer, lm.chat_template)
        cfg = TrainConfig(max_steps=2, batch_size=bs, grad_accum=acc, grad_checkpointing=gc, lr=1e-2, warmup_steps=0)
        hist = _sft_run(lm, ds.items, tmp_path / str(i), cfg).history
        weights = torch.cat([p.detach().flatten() for p in lm.model.parameters() if p.requires_grad])
        runs.append((hist, weights))
    (h0, w0) = runs[0]
    for h, w in runs[1:]:
        # the loss and the (pre-clip) gradient norm of each step: the same sums, however split
        for a, b in zip(h, h0):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert ((w - w0).norm() / w0.norm()) < 1e-4


def test_sft_lowers_validation_loss_and_writes_log_png_checkpoint(mdir, chat_file, tmp_path):
    cfg = TrainConfig(max_steps=30, batch_size=4, lr=5e-3, warmup_steps=3, val_fraction=0.15, eval_every=10, save_every=10,
                      pack=True, lora=LoraConfig(r=8, alpha=16))
    out = tmp_path / "run"
    res = tune(str(mdir), chat_file, out, cfg, progress=False)
    hist = res.result.history
    vals = [r["val_loss"] for r in hist if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0] * 0.7, vals
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.5
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 31)) and all(r["tokens_per_s"] > 0 for r in lines)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert load_checkpoint(out)["step"] == 30
    assert json.loads((out / "summary.json").read_text())["val_examples"] == 7


def test_killed_run_resumes_to_the_identical_adapter(mdir, chat_file, tmp_path):
    cfg = TrainConfig(max_steps=8, batch_size=2, grad_accum=2, lr=5e-3, warmup_steps=2, save_every=3, pack=True,
                      val_fraction=0.1, eval_every=4, lora=LoraConfig(r=4, dropout=0.1))

    def run(out, resume=False, crash_at=None):
        lm = load(str(mdir), dtype="float32")

        def on_step(step):
            if step == crash_at:
                raise KeyboardInterrupt  # killed after step 5; the last checkpoint is step 3's
        with pytest.raises(KeyboardInterrupt) if crash_at else _nothing():
            tune(str(mdir), chat_file, out, cfg, progress=False, resume=resume, on_step=on_step, loaded=lm)
        return lm.model

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", crash_at=5)
    assert load_checkpoint(tmp_path / "cut")["step"] == 3
    with pytest.raises(HearthError, match="already holds a checkpoint; continue it with --resume"):
        run(tmp_path / "cut")
    resumed = run(tmp_path / "cut", resume=True)
    for (n, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n
    log = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert (tmp_path / "cut" / "adapter_model.safetensors").read_bytes() == (tmp_path / "whole" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(HearthError, match=r"other settings \(lr: saved 0.005, given 0.001\)"):
        tune(str(mdir), chat_file, tmp_path / "cut", dataclasses.replace(cfg, lr=1e-3), progress=False, resume=True)
    other = load(str(mdir), dtype="float32")  # the same shape, other weights (as a merged fine-tune would be)
    with torch.no_grad():
        other.model.norm.weight.add_(0.01)
    with pytest.raises(HearthError, match="made on another base model"):
        tune(str(mdir), chat_file, tmp_path / "cut", cfg, progress=False, resume=True, loaded=other)
    with pytest.raises(HearthError, match="nothing to resume"):
        tune(str(mdir), chat_file, tmp_path / "fresh", cfg, progress=False, resume=True)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_a_crash_while_saving_keeps_the_last_good_checkpoint(mdir, chat_file, tmp_path, monkeypatch):
    import hearth.tune.checkpoint as ck

    cfg = TrainConfig(max_steps=4, batch_size=4, save_every=2, lr=1e-3, warmup_steps=0)
    out = tmp_path / "run"
    real_save = torch.save

    def dying_save(obj, f):
        if obj["step"] == 4:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        real_save(obj, f)
    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(OSError):
        tune(str(mdir), chat_file, out, cfg, progress=False)
    state = load_checkpoint(out)
    assert state["step"] == 2 and not list(checkpoint_path(out).parent.glob("*.tmp"))
    monkeypatch.setattr(ck.torch, "save", real_save)
    res = tune(str(mdir), chat_file, out, cfg, progress=False, resume=True)
    assert res.result.steps == 4 and load_checkpoint(out)["step"] == 4


def test_memory_estimate_refuses_before_training(mdir, chat_file, tmp_path):
    with pytest.raises(HearthError, match=r"training would need about .* GiB .* but --memory-limit is 0.00 GiB; try "):
        tune(str(mdir), chat_file, tmp_path / "oom", TrainConfig(max_steps=1), progress=False, memory_limit=1 << 20)
    assert not checkpoint_path(tmp_path / "oom").exists()


# ---------------------------------------------------------------------------------- QLoRA, DPO, KD

def test_nf4_roundtrip_and_linear():
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.05
    packed, scale = quantize_nf4(w)
    assert packed.dtype == torch.uint8 and packed.numel() == w.numel() // 2
    back = dequantize_nf4(packed, scale, tuple(w.shape), torch.float32)
    rel = (back - w).norm() / w.norm()
    assert 0.05 < rel < 0.12  # 4-bit: about 9% relative error on Gaussian weights
    lin = torch.nn.Linear(128, 96, bias=False)
    lin.weight.data.copy_(w)
    q = NF4Linear.from_linear(lin)
    x = torch.randn(3, 128)
    torch.testing.assert_close(q(x), x @ back.T)


def test_qlora_trains_adapters_over_a_4bit_base(mdir, chat_file, tmp_path):
    cfg = TrainConfig(method="qlora", max_steps=20, batch_size=4, lr=5e-3, warmup_steps=2, val_fraction=0.15)
    lm = load(str(mdir), dtype="float32")
    res = tune(str(mdir), chat_file, tmp_path / "q", cfg, progress=False, loaded=lm)
    nf4 = [m for m in lm.model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 2 * 7
    assert all(not p.requires_grad for n, p in lm.model.named_parameters() if "lora_" not in n)
    h = res.result.history
    assert h[-1]["loss"] < h[0]["loss"] * 0.5


def test_dpo_prefers_chosen_answers(mdir, tmp_path):
    from hearth.tune.objectives import DPO

    pairs = [{"prompt": f"Which word is number {i % 8}?", "chosen": "blue", "rejected": "stone"} for i in range(24)]
    f = tune_kit.write_jsonl(tmp_path / "pairs.jsonl", pairs)
    lm = load(str(mdir), dtype="float32")
    cfg = TrainConfig(method="dpo", max_steps=15, batch_size=4, lr=5e-3, warmup_steps=0, val_fraction=0.2, dpo_beta=0.5)
    res = tune(str(mdir), f, tmp_path / "dpo", cfg, progress=False, loaded=lm)
    ds = D.load_dataset(f, lm.tokenizer, lm.chat_template, "dpo")
    assert res.result.history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at start
    assert res.result.val_loss < 0.3
    assert DPO("cpu", 0.5).reward_accuracy(lm.model, ds.items) == 1.0
    bad = tune_kit.write_jsonl(tmp_path / "badpairs.jsonl", [{"prompt": "x", "chosen": "y"}])
    with pytest.raises(HearthError, match="badpairs.jsonl:1: missing 'rejected'"):
        tune(str(mdir), bad, tmp_path / "dpo2", cfg, progress=False, loaded=load(str(mdir), dtype="float32"))


def test_distillation_kl_is_zero_for_identical_models_and_student_learns(mdir, chat_file, tmp_path):
    lm = load(str(mdir), dtype="float32")
    ds = D.load_dataset(chat_file, lm.tokenizer, lm.chat_template, "lm")
    same = Distill(lm.model, "cpu", temperature=2.0, alpha=1.0)
    loss, n = same.loss(lm.model, [[ex] for ex in ds.items[:4]])
    assert n > 0 and abs(float(loss)) < 1e-3
    student = {"vocab_size": 384, "dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 64, "max_seq_len": 256,
               "tie_embeddings": True}
    (tmp_path / "student.json").write_text(json.dumps(student))
    cfg = TrainConfig(max_steps=10, batch_size=4, lr=3e-3, warmup_steps=1, val_fraction=0.15)
    res = distill(str(mdir), str(tmp_path / "student.json"), chat_file, tmp_path / "kd", cfg, progress=False, teacher=lm)
    assert res.result.history[-1]["loss"] < res.result.history[0]["loss"]
    again = load(str(tmp_path / "kd" / "model"), dtype="float32")
    assert again.model.config.dim == 32 and again.tokenizer.vocab_size == lm.tokenizer.vocab_size
    lin = json.loads((tmp_path / "kd" / "summary.json").read_text())["lineage"]  # the teacher is the base of record
    assert lin["base"]["ref"] == str(mdir) and lin["base"]["digest"].startswith("sha256:")
    assert lin["settings"]["alpha"] == 0.5 and lin["settings"]["student"].endswith("student.json")
    assert lin["data"][0]["rows"] == sum(1 for line in Path(chat_file).read_text().splitlines() if line.strip())
    (tmp_path / "wrong.json").write_text(json.dumps({**student, "vocab_size": 100}))
    with pytest.raises(HearthError, match="student's vocabulary .* teacher's tokenizer"):
        distill(str(mdir), str(tmp_path / "wrong.json"), chat_file, tmp_path / "kd2", cfg, progress=False, teacher=lm)
