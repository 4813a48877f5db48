"""The OpenAI-compatible wire format (pydantic v2), one module per endpoint as vLLM splits it:

    common.py       strict models, FieldError, JSON depth, sampling and structured-output fields, prompts, usage
    chat.py         /v1/chat/completions (messages, tools)
    completion.py   /v1/completions
    tokenize.py     /tokenize, /detokenize
    embedding.py    /v1/embeddings
    moderation.py   /v1/moderations (the guard, hearth serve --guard)
    models.py       /v1/models
    records.py      stored completions and feedback (hearth serve --capture)

The names below are re-exported for callers that want the whole format in one place (openapi.py).
"""

from hearth.server.protocol.common import (
    MAX_LOGPROBS,
    MAX_N,
    SEED_MAX,
    MAX_STOP,
    MAX_JSON_DEPTH,
    TOKEN_ID_KEY,
    FieldError,
    Strict,
    StreamOptions,
    Stop,
    JsonSchemaFormat,
    ResponseFormat,
    StructuredOutputs,
    SamplingFields,
    Prompt,
    PromptField,
    prompt_shape,
    UsageInfo,
    TopLogprob,
)
from hearth.server.protocol.chat import (
    TextPart,
    FunctionCall,
    ToolCall,
    ChatMessage,
    FunctionDef,
    Tool,
    NamedFunction,
    NamedToolChoice,
    ChatCompletionRequest,
    ChatTokenLogprob,
    ChatChoiceLogprobs,
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChatChunkChoice,
    ChatCompletionChunk,
)
from hearth.server.protocol.completion import (
    CompletionRequest,
    CompletionLogprobs,
    CompletionChoice,
    CompletionResponse,
)
from hearth.server.protocol.tokenize import (
    TokenizeCompletionRequest,
    TokenizeChatRequest,
    DetokenizeRequest,
    TokenizeResponse,
    DetokenizeResponse,
)
from hearth.server.protocol.embedding import (
    EmbeddingRequest,
    Embedding,
    EmbeddingUsage,
    EmbeddingResponse,
)
from hearth.server.protocol.moderation import (
    ModerationRequest,
    ModerationResult,
    ModerationResponse,
)
from hearth.server.protocol.models import (
    ModelCard,
    ModelList,
)

from hearth.server.protocol.records import FeedbackRequest, UpdateCompletionRequest

__all__ = [
    "MAX_LOGPROBS",
    "MAX_N",
    "SEED_MAX",
    "MAX_STOP",
    "MAX_JSON_DEPTH",
    "TOKEN_ID_KEY",
    "FieldError",
    "Strict",
    "StreamOptions",
    "Stop",
    "JsonSchemaFormat",
    "ResponseFormat",
    "StructuredOutputs",
    "SamplingFields",
    "Prompt",
    "PromptField",
    "prompt_shape",
    "UsageInfo",
    "TopLogprob",
    "TextPart",
    "FunctionCall",
    "ToolCall",
    "ChatMessage",
    "FunctionDef",
    "Tool",
    "NamedFunction",
    "NamedToolChoice",
    "ChatCompletionRequest",
    "ChatTokenLogprob",
    "ChatChoiceLogprobs",
    "AssistantMessage",
    "ChatChoice",
    "ChatCompletionResponse",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "CompletionRequest",
    "CompletionLogprobs",
    "CompletionChoice",
    "CompletionResponse",
    "TokenizeCompletionRequest",
    "TokenizeChatRequest",
    "DetokenizeRequest",
    "TokenizeResponse",
    "DetokenizeResponse",
    "EmbeddingRequest",
    "Embedding",
    "EmbeddingUsage",
    "EmbeddingResponse",
    "ModerationRequest",
    "ModerationResult",
    "ModerationResponse",
    "ModelCard",
    "ModelList",
    "FeedbackRequest",
    "UpdateCompletionRequest",
]
