"""Limits on a structured-output spec, checked in Python before any native code sees it.

llguidance's compiler recurses once per level of nesting and its cost grows with a spec's size, so a hostile schema
or grammar can crash the process or hold a CPU for minutes (see grammar_worker.py). These checks refuse the plainly
oversized in microseconds, with a message naming the limit; what passes them is still compiled first in a worker
process on a time budget (grammar_pool.py), which catches whatever a count in Python cannot foresee.

Where the defaults come from (llguidance 1.9.1, measured on an 8 MiB stack, the worker's; the depth it reaches grows
linearly with the stack): the process dies at ~930 links of a `$ref` chain of objects (~1,900 levels once inlined),
~2,700 chained Lark rules, ~3,500 chained GBNF rules; its JSON reader refuses schemas nested over 128 levels. The
defaults stay 2.7x (rules) to 9x ($ref links) below that in the worker, and the server's own compile has 8x the
stack again, while staying far above real schemas and grammars (OpenAI's structured outputs allow 10 levels of
nesting; llama.cpp's grammars/ hold at most a few dozen rules). GBNF is turned into Lark in Python, in quadratic
time: 1,000 rules take ~0.4 s, inside the compile's budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from hearth import safejson
from hearth.errors import HearthError

# llguidance reads a schema with serde_json, which refuses more than 128 levels of nesting: no limit may allow more
MAX_JSON_DEPTH = 128
# a schema keyword whose value maps names to subschemas (its keys are names, not keywords)
_NAMED = {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
_CONTAINERS = ("$defs", "definitions")  # hold subschemas that only a $ref instantiates
# a rule definition: GBNF `name ::=`, Lark `name:` / `?name:` / `NAME.2:` at the start of a line (over-counting
# something that only looks like one is harmless: the count is an upper bound)
_RULE = re.compile(r"^[ \t]*[?!]?[A-Za-z_][A-Za-z0-9_.\-]*[ \t]*(?:::=|:)", re.MULTILINE)


@dataclass(frozen=True)
class StructureLimits:
    """What a structured-output spec (JSON schema, regular expression, grammar, choice list) may hold.

    max_bytes: the spec's size in UTF-8. max_depth: nesting of a JSON schema's text. max_ref_chain: `$ref` links
    followed one after another. max_inlined_depth: nesting of a JSON schema with each `$ref` replaced by what it
    names (what the compiler recurses through). max_rules: rules in a GBNF or Lark grammar. max_regex_bytes: one
    regular expression (`regex`, or a schema's `pattern`). compile_seconds: wall time for one compile in the worker
    (and again in the server: the same work). memory_bytes: what one compile may add to the worker's address space."""

    max_bytes: int = 128 << 10
    max_depth: int = 64
    max_ref_chain: int = 100
    max_inlined_depth: int = 256
    max_rules: int = 1000
    max_regex_bytes: int = 16 << 10
    compile_seconds: float = 5.0
    memory_bytes: int = 1 << 30

    def __post_init__(self):
        ints = ("max_bytes", "max_depth", "max_ref_chain", "max_inlined_depth", "max_rules", "max_regex_bytes",
                "memory_bytes")
        for name in ints:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"StructureLimits.{name} must be an integer >= 1, not {getattr(self, name)!r}")
        if self.max_depth > MAX_JSON_DEPTH:
            raise ValueError(f"StructureLimits.max_depth is at most {MAX_JSON_DEPTH} (llguidance's JSON reader's limit)")
        if not (0 < self.compile_seconds <= 3600):
            raise ValueError(f"StructureLimits.compile_seconds must be in (0, 3600], not {self.compile_seconds!r}")
        if self.memory_bytes < (64 << 20):
            raise ValueError("StructureLimits.memory_bytes must be at least 64 MiB (a compile thread's stack and heap)")


def too_complex(what: str, detail: str) -> HearthError:
    return HearthError(f"invalid {what}: too complex: {detail}")


def check(kind: str, spec: str, limits: StructureLimits) -> None:
    """HearthError ("invalid JSON schema: too complex: ...") for a spec over one of `limits`."""
    what = {"json": "JSON schema", "regex": "regular expression", "grammar": "grammar", "choice": "choice"}[kind]
    size = len(spec.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise too_complex(what, f"{size} bytes; the limit is {limits.max_bytes}")
    if kind == "regex" and size > limits.max_regex_bytes:
        raise too_complex(what, f"{size} bytes; the limit for a regular expression is {limits.max_regex_bytes}")
    if kind == "grammar":
        rules = len(_RULE.findall(spec))
        if rules > limits.max_rules:
            raise too_complex(what, f"{rules} rules; the limit is {limits.max_rules}")
    if kind == "json":
        _check_schema(spec, limits)


def _check_schema(text: str, limits: StructureLimits) -> None:
    depth = safejson.depth(text)
    if depth > limits.max_depth:
        raise too_complex("JSON schema", f"nested {depth} levels deep; the limit is {limits.max_depth}")
    schema = safejson.loads(text, max_depth=limits.max_depth, max_bytes=limits.max_bytes)
    for pattern in _patterns(schema):
        if len(pattern.encode("utf-8", "surrogatepass")) > limits.max_regex_bytes:
            raise too_complex("JSON schema", f"a pattern of {len(pattern)} characters; the limit is "
                                             f"{limits.max_regex_bytes} bytes")
    links, inlined = ref_depths(schema)
    if links > limits.max_ref_chain:
        raise too_complex("JSON schema", f"a $ref chain of {links} links; the limit is {limits.max_ref_chain}")
    if inlined > limits.max_inlined_depth:
        raise too_complex("JSON schema", f"nested {inlined} levels deep once its $refs are followed; the limit is "
                                         f"{limits.max_inlined_depth}")


def _walk(node: Any, skip_containers: bool):
    """(value, depth, key) for every value under `node` (depth 0 for node itself), without recursion. With
    skip_containers, `$defs`/`definitions` are not entered (their subschemas are reached through $refs)."""
    stack = [(node, 0, None, False)]  # (value, depth, its key, whether its keys are names)
    while stack:
        value, depth, key, named = stack.pop()
        yield value, depth, key
        if isinstance(value, dict):
            for k, v in value.items():
                if skip_containers and not named and k in _CONTAINERS:
                    continue
                stack.append((v, depth + 1, k, not named and k in _NAMED))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, None, False) for v in value)


def _patterns(schema: Any):
    for value, _, key in _walk(schema, skip_containers=False):
        if key == "pattern" and isinstance(value, str):
            yield value
        elif key == "patternProperties" and isinstance(value, dict):
            yield from (k for k in value if isinstance(k, str))


def _resolve(schema: Any, ref: str) -> Any:
    """The subschema a local `$ref` ("#", "#/$defs/a", JSON-pointer escapes) names, or None."""
    if not ref.startswith("#"):
        return None  # remote or anchored: llguidance refuses what it cannot find; no chain to follow here
    node = schema
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def ref_depths(schema: Any) -> tuple[int, int]:
    """(the most `$ref` links followed one after another, the deepest nesting with every $ref inlined), from the root.
    A link back to a schema already on the path (a recursive schema: a tree, a linked list) ends the path there: the
    compiler turns it into a rule that names itself instead of recursing. Computed without recursion; each subschema
    a $ref names is walked once."""
    found: dict[str, tuple[int, list[tuple[str, int]]]] = {}

    def edges(ref: str) -> tuple[int, list[tuple[str, int]]]:
        """(the subschema's own depth, [(target, depth of the $ref inside it)]) for the subschema `ref` names."""
        if ref not in found:
            own, out = 0, []
            for value, depth, _ in _walk(_resolve(schema, ref), skip_containers=True):
                own = max(own, depth)
                target = value.get("$ref") if isinstance(value, dict) else None
                if isinstance(target, str) and _resolve(schema, target) is not None:
                    out.append((target, depth))
            found[ref] = (own, out)
        return found[ref]

    memo: dict[str, tuple[int, int]] = {}
    own, out = edges("#")
    stack = [["#", iter(out), 0, own, 0]]  # [ref, edges left, links, inlined depth, depth of the edge followed]
    on_path = {"#"}
    while stack:
        frame = stack[-1]
        for target, depth in frame[1]:
            if target in on_path:
                continue
            if target in memo:
                links, inlined = memo[target]
                frame[2], frame[3] = max(frame[2], links + 1), max(frame[3], depth + inlined)
                continue
            frame[4] = depth
            own, out = edges(target)
            stack.append([target, iter(out), 0, own, 0])
            on_path.add(target)
            break
        else:
            stack.pop()
            on_path.discard(frame[0])
            memo[frame[0]] = (frame[2], frame[3])
            if stack:
                parent = stack[-1]
                parent[2], parent[3] = max(parent[2], frame[2] + 1), max(parent[3], parent[4] + frame[3])
    return memo["#"]
