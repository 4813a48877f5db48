"""Structured output (hearth/engine/structured.py) on the real default model: every output of a constrained
generation is checked by an outside judge (the `jsonschema` validator, Python's `re`), at temperatures high enough
that an unconstrained model would break the format."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from hearth.engine.generate import Generator
from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.engine.request import EngineRequest, FinishReason
from hearth.engine.sampling import Sampler, SamplingParams
from hearth.engine.structured import Structure
from hearth.errors import HearthError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Lyon", "Nice"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def lm(smollm2_model):
    return smollm2_model


@pytest.fixture(scope="module")
def gen(lm):
    return Generator(lm.model, lm.tokenizer)


def chat_ids(lm, text: str) -> list[int]:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    return lm.tokenizer.encode(lm.chat_template.render(msgs), add_bos=False)


def test_json_schema_output_validates(lm, gen):
    ids = chat_ids(lm, "Describe a person from France as JSON.")
    for seed in range(3):
        c = gen.complete(ids, SamplingParams(max_tokens=120, temperature=1.0, seed=seed,
                                             structure=Structure.json_schema(PERSON)))
        assert c.finish_reason == "stop", c.text
        doc = json.loads(c.text)
        jsonschema.validate(doc, PERSON)
        assert list(doc) == list(PERSON["properties"])  # the schema's key order (not sorted, not shuffled)


def test_json_object_and_any_value(lm, gen):
    ids = chat_ids(lm, "Give me some data.")
    c = gen.complete(ids, SamplingParams(max_tokens=80, temperature=0.9, seed=4, structure=Structure.json_object()))
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.text), dict)
    else:  # cut at max_tokens: an unfinished object, never something else
        assert c.finish_reason == "length" and c.text.lstrip().startswith("{")
    ids = chat_ids(lm, "Is water wet? Answer in JSON.")
    c = gen.complete(ids, SamplingParams(max_tokens=80, temperature=0, structure=Structure.json_schema("{}")))
    assert c.finish_reason == "stop", c.text  # '{}': any JSON value
    json.loads(c.text)


def test_regex_choice_and_gbnf_grammar(lm, gen):
    ids = lm.tokenizer.encode("Call me at")
    for seed in range(3):  # temperature 1.5: unconstrained, this model would not write a phone number
        p = SamplingParams(max_tokens=30, temperature=1.5, seed=seed, structure=Structure("regex", r"\(\d{3}\) \d{3}-\d{4}"))
        c = gen.complete(ids, p)
        assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", c.text), c.text
        assert c.finish_reason == "stop"
    colours = ["red", "green", "light blue"]
    c = gen.complete(chat_ids(lm, "Pick a colour."), SamplingParams(max_tokens=10, temperature=1.0, seed=1,
                                                                    structure=Structure.choice(colours)))
    assert c.text in colours and c.finish_reason == "stop"
    gbnf = 'root ::= "The answer is " num "."\nnum ::= [1-9] [0-9]?'  # llama.cpp's GBNF, as its grammars/ files
    c = gen.complete(chat_ids(lm, "What is 6 times 7?"), SamplingParams(max_tokens=20, temperature=0,
                                                                       structure=Structure("grammar", gbnf)))
    assert re.fullmatch(r"The answer is [1-9][0-9]?\.", c.text), c.text


def test_mask_allows_exactly_the_valid_tokens(lm):
    """The mask before the first token of /[0-9]+/: exactly the tokens made of digits, computed here from each
    token's bytes; after one digit, EOS joins them."""
    tok = lm.tokenizer
    sampler = Sampler(SamplingParams(temperature=0, structure=Structure("regex", "[0-9]+")), tok)
    allowed = sampler.constraint.allowed(lm.model.config.vocab_size, torch.device("cpu"))
    digits = {i for i in range(tok.vocab_size) if re.fullmatch(rb"[0-9]+", tok.token_bytes(i))}
    assert digits and set(torch.nonzero(allowed).flatten().tolist()) == digits
    logits = torch.zeros(lm.model.config.vocab_size)
    logits[tok.encode("hello", add_bos=False)[0]] = 100.0  # the model's favourite is not allowed
    first = sampler(logits, torch.tensor([], dtype=torch.long))
    assert first in digits
    after = set(torch.nonzero(sampler.constraint.allowed(logits.numel(), torch.device("cpu"))).flatten().tolist())
    assert after == digits | set(tok.eos_ids) & after and set(tok.eos_ids) & after


def test_complete_output_ends_even_with_ignore_eos_and_length_cuts(lm, gen):
    ids = chat_ids(lm, "Yes or no?")
    c = gen.complete(ids, SamplingParams(max_tokens=50, temperature=0, ignore_eos=True,
                                         structure=Structure.choice(["yes", "no"])))
    assert c.text in ("yes", "no") and c.finish_reason == "stop" and len(c.token_ids) < 50
    c = gen.complete(ids, SamplingParams(max_tokens=3, temperature=0, structure=Structure.json_schema(PERSON)))
    assert c.finish_reason == "length" and len(c.token_ids) == 3 and c.text.startswith("{")


def test_engine_batch_mixes_constrained_and_free_requests(lm, gen):
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, kv_cache_bytes=64 << 20))
    ids = chat_ids(lm, "Describe a person from France as JSON.")
    free = SamplingParams(max_tokens=16, temperature=0)
    reqs = {f"json{s}": SamplingParams(max_tokens=120, temperature=1.0, seed=s, structure=Structure.json_schema(PERSON))
            for s in range(3)}
    reqs["digits"] = SamplingParams(max_tokens=8, temperature=1.0, seed=9, structure=Structure("regex", "[0-9]{4}"))
    reqs["free"] = free
    for rid, p in reqs.items():
        eng.add_request(EngineRequest(rid, ids, p))
    out: dict[str, str] = {}
    reasons: dict[str, FinishReason] = {}
    while eng.has_work():
        for o in eng.step():
            out[o.request_id] = out.get(o.request_id, "") + o.new_text
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    for s in range(3):
        jsonschema.validate(json.loads(out[f"json{s}"]), PERSON)
        assert reasons[f"json{s}"] is FinishReason.STOP
    assert re.fullmatch(r"[0-9]{4}", out["digits"]) and reasons["digits"] is FinishReason.STOP
    assert out["free"] and not out["free"].lstrip().startswith("{")  # the constraint stayed with its own request
    # a schema the engine cannot use is refused before the request is queued, in one line
    with pytest.raises(HearthError, match=r"^invalid JSON schema: .*foo") as e:
        eng.validate(EngineRequest("bad", ids, SamplingParams(structure=Structure.json_schema({"type": "foo"}))))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("make, message", [
    (lambda: Structure.json_schema('{"type": '), r"^the JSON schema is not valid JSON \(Expecting value at line 1"),
    (lambda: Structure.json_schema("[1, 2]"), r"^a JSON schema must be an object, not list"),
    (lambda: Structure.choice([]), r"^choice needs a non-empty list"),
])
def test_bad_specs_fail_when_given(make, message):
    with pytest.raises(HearthError, match=message):
        make()


@pytest.mark.parametrize("structure, message", [
    (Structure("regex", "(yes|no"), r"^invalid regular expression: .*\(unclosed group\)$"),
    (Structure("grammar", 'root ::= "a'), r"^invalid grammar: "),
    (Structure("grammar", "root ::= missing"), r"^invalid grammar: "),
    (Structure.json_schema({"type": "integer", "minimum": 5, "maximum": 1}), r"^invalid JSON schema: "),
])
def test_bad_specs_fail_against_the_vocabulary_in_one_line(lm, structure, message):
    with pytest.raises(HearthError, match=message) as e:
        structure.check(lm.tokenizer)
    assert "\n" not in str(e.value)
    with pytest.raises(HearthError, match=message):
        Sampler(SamplingParams(structure=structure), lm.tokenizer)
