"""ChatTemplate: the prompt hearth renders must be exactly transformers' `apply_chat_template` output,
and a hostile or broken template must end in hearth's one-line TemplateError, never a traceback.

References: the default model's template as transformers reads it from the GGUF, and a few real-world
template styles (Llama 3, Llama 2 [INST], Mistral v0.1, a tool-aware Mistral v0.3-like one, and a
feature sampler) given to a `PreTrainedTokenizerFast` with `chat_template` set.
"""

from __future__ import annotations


import pytest

from hf_tokenizer_kit import transformers_gguf_tokenizer
from hearth.errors import HearthError
from hearth.loader import resolve_model
from hearth.tokenizer import ChatTemplate
from hearth.tokenizer.chat import CHATML, TemplateError
from hearth.weights import open_checkpoint

transformers = pytest.importorskip("transformers")

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hi!"}],
    "system_user": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    "multi_turn": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    "system_multi_turn_ending_assistant": [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "  Bonjour !  "},
        {"role": "user", "content": "Thanks\n"},
        {"role": "assistant", "content": "De rien."},
    ],
    "unicode": [
        {"role": "user", "content": "Ünïcödé 😀👨\u200d👩\u200d👧 你好，世界 e\u0301 \u00a0tab\there\n\nnew lines"},
        {"role": "assistant", "content": "日本語 🇯🇵 — “quotes” ‘too’ <b>html</b> & {{ not jinja }} {% raw %}"},
        {"role": "user", "content": "  spaced  "},
    ],
}


@pytest.fixture(scope="module")
def smollm2_data():
    return open_checkpoint(resolve_model("smollm2")).tokenizer


@pytest.fixture(scope="module")
def tf_smollm2(pytestconfig, tmp_path_factory):
    return transformers_gguf_tokenizer(pytestconfig, tmp_path_factory, resolve_model("smollm2"))


def _tf_tokenizer(template: str, **special):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))  # rendering never tokenizes
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **special)


def _both(template: str, special: dict[str, str], messages, add_generation_prompt: bool, **kwargs) -> tuple[str, str]:
    ours = ChatTemplate(template, special).render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
    theirs = _tf_tokenizer(template, **special).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
    return ours, theirs


# ---------------------------------------------------------------- the default model's template


def test_smollm2_template_and_special_tokens_match_transformers(smollm2_data, tf_smollm2):
    assert smollm2_data.chat_template and smollm2_data.chat_template == tf_smollm2.chat_template
    assert smollm2_data.special_tokens == {k: v for k, v in tf_smollm2.special_tokens_map.items() if isinstance(v, str)}


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_render_matches_transformers(smollm2_data, tf_smollm2, name, gen):
    messages = CONVERSATIONS[name]
    ours = ChatTemplate(smollm2_data.chat_template, smollm2_data.special_tokens).render(messages, add_generation_prompt=gen)
    theirs = tf_smollm2.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == gen


def test_smollm2_render_exact(smollm2_data):
    out = ChatTemplate(smollm2_data.chat_template, smollm2_data.special_tokens).render(CONVERSATIONS["single_user"])
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_fallback_matches_transformers():
    tpl = ChatTemplate(None)
    assert tpl.is_fallback and tpl.source == CHATML
    for messages in CONVERSATIONS.values():
        for gen in (True, False):
            assert tpl.render(messages, add_generation_prompt=gen) == _both(CHATML, {}, messages, gen)[1]


# ---------------------------------------------------------------- other real-world templates

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIAL = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA2_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Modeled on Mistral v0.3's tool-aware template, without its `tools is defined` guard: transformers
# passes tools=None, so `tools is not none` must be false when no tools are given.
MISTRAL_TOOLS = """
{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {{- '{"type": "function", "function": ' + (tool.function | tojson) + '}' }}
                {%- if not loop.last %}{{- ", " }}{%- endif %}
            {%- endfor %}
            {{- "][/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {%- generation %}{{- " " + message["content"]|trim + eos_token}}{%- endgeneration %}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city — °C",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

# A sampler of what newer templates use: whitespace control, namespace, tojson options, loop controls,
# selectattr/map, `is defined`, string methods, dict(), strftime_now (year only: stable within a run).
FEATURES = """
{%- set ns = namespace(system=none, n=0) -%}
{%- for m in messages -%}
  {%- if m.role == 'system' %}{% set ns.system = m.content %}{% continue %}{% endif -%}
  {%- set ns.n = ns.n + 1 -%}
{%- endfor -%}
{{- bos_token -}}
{%- if ns.system is not none %}[SYS {{ ns.system | upper }}]{% endif %}
{%- for m in messages if m.role != 'system' -%}
  {%- if loop.index > 3 %}{% break %}{% endif %}
  {{ loop.index }}/{{ ns.n }} {{ m.role | capitalize }}: {{ m.content | tojson }}
  {%- if m.meta is defined %} {{ m.meta | tojson(indent=2, sort_keys=true) }}{% endif %}
  {%- if m.content.startswith('Hi') %} (greeting){% endif %}
{% endfor -%}
roles={{ messages | map(attribute='role') | unique | join(',') }}
{{ dict(a=1, b=[1, 2]) | tojson(separators=(',', ':')) }} {{ strftime_now('%Y') | length }}
{%- if add_generation_prompt %}
Assistant:{% endif %}
"""

TEMPLATES = {
    "llama3": (LLAMA3, LLAMA3_SPECIAL),
    "llama2": (LLAMA2, LLAMA2_SPECIAL),
    "mistral": (MISTRAL, LLAMA2_SPECIAL),
    "mistral_tools": (MISTRAL_TOOLS, LLAMA2_SPECIAL),
    "features": (FEATURES, LLAMA2_SPECIAL),
}
ALTERNATING = ["single_user", "multi_turn", "unicode"]  # valid for the [INST] templates
WITH_SYSTEM = ["system_user", "system_multi_turn_ending_assistant"]


def _cases():
    for tname in TEMPLATES:
        convs = list(CONVERSATIONS) if tname in ("llama3", "features") else ALTERNATING
        if tname in ("llama2", "mistral_tools"):
            convs = convs + WITH_SYSTEM
        for c in convs:
            for gen in (True, False):
                yield pytest.param(tname, c, gen, id=f"{tname}-{c}-{'gen' if gen else 'nogen'}")


@pytest.mark.parametrize("tname,conv,gen", list(_cases()))
def test_template_matches_transformers(tname, conv, gen):
    template, special = TEMPLATES[tname]
    messages = CONVERSATIONS[conv]
    if tname == "features":
        messages = [dict(m) for m in messages]
        messages[-1]["meta"] = {"z": 1, "a": ["ü", None, True]}
    ours, theirs = _both(template, special, messages, gen)
    assert ours == theirs


def test_llama3_exact():
    ours = ChatTemplate(LLAMA3, LLAMA3_SPECIAL).render([{"role": "user", "content": "  Hi  \n"}])
    assert ours == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama2_exact():
    ours = ChatTemplate(LLAMA2, LLAMA2_SPECIAL).render(CONVERSATIONS["system_multi_turn_ending_assistant"][:3])
    assert ours == "<s>[INST] <<SYS>>\nYou answer in French.\n<</SYS>>\n\nHello [/INST] Bonjour ! </s>"


def test_tools_passed_through():
    messages = CONVERSATIONS["multi_turn"]
    ours, theirs = _both(MISTRAL_TOOLS, LLAMA2_SPECIAL, messages, True, tools=TOOLS)
    assert ours == theirs
    assert '[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather"' in ours
    assert "°C" in ours  # tojson keeps non-ASCII, as transformers' does
    no_tools = ChatTemplate(MISTRAL_TOOLS, LLAMA2_SPECIAL).render(messages)
    assert "AVAILABLE_TOOLS" not in no_tools


@pytest.mark.parametrize("tname", ["llama2", "mistral"])
def test_bad_role_order_raises(tname):
    template, special = TEMPLATES[tname]
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TemplateError, match="roles must alternate") as err:
        ChatTemplate(template, special).render(bad)
    assert isinstance(err.value, HearthError) and "\n" not in str(err.value)
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError):  # transformers refuses it too
        _tf_tokenizer(template, **special).apply_chat_template(bad, tokenize=False)


def test_mistral_rejects_other_roles():
    with pytest.raises(TemplateError, match="Only user and assistant roles"):
        ChatTemplate(MISTRAL, LLAMA2_SPECIAL).render([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])


# ---------------------------------------------------------------- sandbox and errors

UNSAFE = {
    "mro": "{{ ''.__class__.__mro__ }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler_init_globals": "{{ cycler.__init__.__globals__.os }}",
    "globals_item": "{{ raise_exception.__globals__['os'] }}",
    "message_class_call": "{% for m in messages %}{{ m.__class__.__init__() }}{% endfor %}",
    "mutate_messages": "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "mutate_dict": "{{ messages[0].update({'content': 'pwned'}) }}",
    "pop": "{{ messages.pop() }}",
    "huge_range": "{% for i in range(10**9) %}x{% endfor %}",
}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_unsafe_templates_raise_template_error(name):
    messages = [{"role": "user", "content": "hi"}]
    tpl = ChatTemplate(UNSAFE[name])
    with pytest.raises(TemplateError) as err:
        tpl.render(messages)
    assert isinstance(err.value, HearthError)
    msg = str(err.value)
    assert msg.startswith("chat template") and "\n" not in msg and len(msg) < 400
    assert messages == [{"role": "user", "content": "hi"}]  # untouched


# One unsafe attribute, printed and not used further: Jinja's sandbox yields an undefined value that
# prints as nothing (nothing leaks); transformers renders the same empty string, so hearth does too.
SILENT = {
    "class": "[{{ ''.__class__ }}]",
    "globals": "[{{ raise_exception.__globals__ }}]",
    "message_class": "[{% for m in messages %}{{ m.__class__ }}{% endfor %}]",
    "format_attack": "[{{ '{0.__class__}'.format(messages) }}]",
}


@pytest.mark.parametrize("name", list(SILENT))
def test_single_unsafe_attribute_renders_nothing(name):
    ours, theirs = _both(SILENT[name], {}, [{"role": "user", "content": "hi"}], False)
    assert ours == theirs == "[]"


@pytest.mark.parametrize(
    "source",
    [
        "{% for m in messages %}{{ m.content }}",  # unclosed block
        "{{ messages[0 }}",
        "{% if %}x{% endif %}",
        "{% endfor %}",
        "{% generation %}unclosed",
    ],
)
def test_syntax_error_raises_at_construction(source):
    with pytest.raises(TemplateError) as err:
        ChatTemplate(source)
    assert isinstance(err.value, HearthError)
    assert "does not parse" in str(err.value) and "\n" not in str(err.value)


def test_raise_exception_surfaces_as_template_error():
    tpl = ChatTemplate("{% if messages[-1]['role'] != 'user' %}{{ raise_exception('last message must be from the user') }}{% endif %}ok")
    assert tpl.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateError, match="last message must be from the user") as err:
        tpl.render([{"role": "assistant", "content": "x"}])
    assert "\n" not in str(err.value)


def test_runtime_error_in_template_is_template_error():
    with pytest.raises(TemplateError, match="chat template failed") as err:
        ChatTemplate("{{ messages[5]['content'] + 1 }}").render([{"role": "user", "content": "x"}])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "user"}], [{"content": "x"}], ["hello"], [{"role": "user", "content": "x"}, None]],
    ids=["empty", "no_content", "no_role", "not_a_dict", "none_message"],
)
def test_bad_messages_rejected(messages):
    with pytest.raises(TemplateError) as err:
        ChatTemplate(None).render(messages)
    assert isinstance(err.value, HearthError) and "\n" not in str(err.value)
