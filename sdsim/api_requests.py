"""What a request to `sdsim serve`'s OpenAI-compatible API asks for: its body read within bounds,
validated by typed models, its prompt counted in tokens, and its length checked against the model.

A request is answered with HTTP 400 and a one-line message that starts with the field at fault
(:class:`RequestError`) when:

* the body is larger than :data:`MAX_BODY_BYTES`, not JSON, or nested deeper than the JSON parser
  allows (pydantic's parser, written in Rust, stops at a fixed depth instead of recursing: a body
  nested 100,000 levels deep is refused in microseconds, never a ``RecursionError``);
* a field has the wrong type or range (:class:`CompletionRequest`, :class:`ChatRequest`; integers
  and booleans are strict: ``"5"`` or ``true`` for ``max_tokens`` is refused, not coerced); fields
  the server has no use for (``temperature``, ``seed``, ...) are ignored, as vLLM ignores fields it
  does not know;
* it asks for what the simulated engine cannot serve faithfully: ``n`` or ``best_of`` above 1
  (several sequences sharing a prefill), beam search, or a batch of prompts;
* its prompt and output do not fit the model's context, with vLLM's rules and words
  (``vllm/entrypoints/openai/serving_engine.py``): a prompt of ``max_context`` tokens or more is
  refused naming the prompt; otherwise ``prompt + max_tokens > max_context`` is refused naming
  ``max_tokens``; without ``max_tokens`` the output is the server's default, cut to the context
  left (vLLM's default is the whole context left).

Prompt tokens are counted by a :class:`TokenCounter`: a local ``tokenizer.json`` read with the
``tokenizers`` package (``sdsim serve --tokenizer``), counting a text as a load generator does
(GuideLLM counts ``len(tokenizer.tokenize(text))``: no special tokens), or, without one, the
heuristic ``max(words, ceil(characters / 4))``. Token-id prompts count exactly.
"""

from __future__ import annotations

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_REQUEST_TOKENS",
    "ApiRequest",
    "ChatRequest",
    "CompletionRequest",
    "RequestError",
    "TokenCounter",
    "count_tokens",
    "parse_request",
]

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from sdsim.errors import ScenarioError, format_validation_error

# Largest output or prompt a request may ask for; beyond it a request is a mistake, not a load.
MAX_REQUEST_TOKENS = 1_000_000
# Largest request body: a 1,000,000-token prompt as token ids (~8 bytes each) or as text (~4
# characters per token, up to 6 bytes per JSON-escaped character) fits.
MAX_BODY_BYTES = 32 * 2**20


class RequestError(ScenarioError):
    """A request the API refuses (HTTP 400): ``field`` is the request field at fault (or
    ``request body``), the message one line."""


def count_tokens(text: str) -> int:
    """Approximate token count of a text: ``max(words, ceil(chars / 4), 1)``."""
    return max(len(text.split()), math.ceil(len(text) / 4), 1)


class TokenCounter:
    """Counts the tokens of a prompt's text.

    Parameters
    ----------
    tokenizer
        A ``tokenizers.Tokenizer``; ``None`` counts with :func:`count_tokens`.
    source
        What counts (for messages): ``"heuristic"`` or the tokenizer file's path.
    """

    def __init__(self, tokenizer: Any = None, source: str = "heuristic") -> None:
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path, field: str = "--tokenizer") -> TokenCounter:
        """Read a ``tokenizer.json`` (or a folder holding one) with the ``tokenizers`` package.

        Raises
        ------
        ScenarioError
            Naming ``field``: the package is not installed, the file is missing or unreadable, or
            it is not a tokenizer the package reads.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise ScenarioError(field, f"{p}: no such file (a tokenizer.json, or its folder)")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ScenarioError(
                field, "needs the tokenizers package: pip install 'sdsim[tokenizer]'"
            ) from None
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as exc:  # the Rust side raises its own exception type
            why = " ".join(str(exc).split())[:160]
            raise ScenarioError(
                field, f"{p}: not a tokenizer.json the tokenizers package reads ({why})"
            ) from None
        return cls(tok, str(p))

    def count(self, text: str) -> int:
        """Tokens of ``text`` (at least 1: the engine prefills at least one token)."""
        if self.tokenizer is None:
            return count_tokens(text)
        return max(len(self.tokenizer.encode(text, add_special_tokens=False).ids), 1)


# --------------------------------------------------------------------------- request models

_Tokens = Annotated[StrictInt, Field(ge=1, le=MAX_REQUEST_TOKENS)]


class _Model(BaseModel):
    # unknown fields are ignored, as vLLM ignores them
    model_config = ConfigDict(extra="ignore", frozen=True)


class StreamOptions(_Model):
    """``stream_options``: usage in the last chunk, or in every chunk."""

    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class _Request(_Model):
    model: StrictStr | None = None
    max_tokens: _Tokens | None = None
    n: StrictInt = 1
    best_of: StrictInt | None = None
    use_beam_search: StrictBool = False
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Request):
    """``POST /v1/completions``: one prompt, as text or token ids."""

    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]


class ContentPart(_Model):
    """A part of a chat message's content; only ``text`` parts carry prompt tokens here."""

    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Model):
    """A chat message."""

    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: _Tokens | None = None


@dataclass(frozen=True)
class ApiRequest:
    """What the engine needs of a validated request."""

    prompt_tokens: int
    max_tokens: int
    # the field that set the output length (the prompt's field when the default applied)
    output_field: str
    stream: bool
    include_usage: bool
    continuous_usage: bool


def _prompt_tokens(req: CompletionRequest | ChatRequest, counter: TokenCounter) -> int:
    if isinstance(req, ChatRequest):
        total = 0
        for m in req.messages:
            if isinstance(m.content, str):
                total += counter.count(m.content)
            elif m.content is not None:
                total += sum(counter.count(p.text) for p in m.content if p.text is not None)
        return max(total, 1)
    p = req.prompt
    if isinstance(p, str):
        return counter.count(p)
    if not p:
        raise RequestError("prompt", "must be a non-empty string or a list of token ids")
    first = p[0]
    if isinstance(first, int):
        return len(p)
    if len(p) > 1:
        raise RequestError("prompt", "batched prompts are not supported; send one prompt")
    if isinstance(first, str):
        return counter.count(first)
    if not first:
        raise RequestError("prompt", "must be a non-empty string or a list of token ids")
    return len(first)


def parse_request(
    body: bytes,
    chat: bool,
    counter: TokenCounter,
    max_context: int,
    default_max_tokens: int,
) -> ApiRequest:
    """Validate a request body and measure it.

    Parameters
    ----------
    body
        The raw body (its size already bounded by :data:`MAX_BODY_BYTES`).
    chat
        ``/v1/chat/completions`` (else ``/v1/completions``).
    counter
        Counts prompt text in tokens.
    max_context
        The model's context (``max_position_embeddings``): prompt + output tokens.
    default_max_tokens
        Output length when the request gives none (cut to the context left).

    Raises
    ------
    RequestError
        Naming the field at fault (``request body`` for a body that is not a JSON object).
    """
    model: type[CompletionRequest] | type[ChatRequest] = ChatRequest if chat else CompletionRequest
    try:
        req = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            why = str(first.get("ctx", {}).get("error", "invalid JSON"))
            if why.startswith("recursion limit exceeded"):
                # pydantic's parser stops at its fixed depth: the object and 200 levels inside
                raise RequestError("request body", f"nested too deeply ({why})") from None
            raise RequestError("request body", f"not valid JSON ({why})") from None
        if first["type"] == "model_type" and not first.get("loc"):
            raise RequestError("request body", "must be a JSON object") from None
        e = format_validation_error(exc, model=model)
        raise RequestError(e.field, e.message) from None
    if req.n != 1:
        raise RequestError(
            "n", f"only n = 1 is served (got {req.n}): the simulated engine runs one sequence "
            "per request; send n requests instead",
        )
    if req.best_of not in (None, 1):
        raise RequestError("best_of", f"only best_of = 1 is served (got {req.best_of})")
    if req.use_beam_search:
        raise RequestError("use_beam_search", "beam search is not served")
    if req.stream_options is not None and not req.stream:
        raise RequestError("stream_options", "can only be given when stream is true (as vLLM)")
    prompt = _prompt_tokens(req, counter)
    where = "messages" if chat else "prompt"
    if prompt >= max_context:
        raise RequestError(
            where,
            f"This model's maximum context length is {max_context} tokens. However, your "
            f"request has {prompt} input tokens. Please reduce the length of the input "
            f"{'messages' if chat else 'prompt'}.",
        )
    given = req.max_completion_tokens if isinstance(req, ChatRequest) else None
    name = "max_completion_tokens" if given is not None else "max_tokens"
    out = given if given is not None else req.max_tokens
    if out is None:
        out = min(default_max_tokens, max_context - prompt)
    elif prompt + out > max_context:
        raise RequestError(
            name,
            f"'max_tokens' or 'max_completion_tokens' is too large: {out}. This model's maximum "
            f"context length is {max_context} tokens and your request has {prompt} input tokens "
            f"({out} > {max_context} - {prompt}).",
        )
    opts = req.stream_options
    return ApiRequest(
        prompt_tokens=prompt,
        max_tokens=out,
        output_field=name if (given if given is not None else req.max_tokens) else where,
        stream=bool(req.stream),
        include_usage=bool(opts is not None and opts.include_usage),
        continuous_usage=bool(opts is not None and opts.continuous_usage_stats),
    )
