"""`create_app(backend, settings)`: the FastAPI app of `parafill serve` over an open LocalBackend.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions. Handlers validate,
check limits against the engine's context *before* anything is submitted (so a bad request is a
400, never a broken stream), then hand a `Job` to `direct` (the model itself) or `sot`
(`parafill-sot`). Bodies over `max_body` bytes are refused (413) before they are parsed;
prompts are tokenized in a worker thread, so a huge one never stalls other requests. The
backend's lifetime belongs to the caller (the CLI or a test).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from parafill.backends.base import BackendError, Sampling
from parafill.backends.engine.engine import Engine
from parafill.backends.local import LocalBackend
from parafill.constraints.spec import Constraint, ConstraintError, json_object, json_schema
from parafill.errors import real_error
from parafill.orchestrator.runner import RunFailed
from parafill.planners.skeleton import SkeletonPlanner
from parafill.server import direct, sot
from parafill.server.direct import Job, Kind
from parafill.server.errors import APIError, APIKeyGate, install_handlers
from parafill.server.limits import DEFAULT_MAX_BODY, BodyLimit
from parafill.server.schemas import (
    ChatRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    unsupported,
)
from parafill.server.sse import EventStream, unless_gone


@dataclass(frozen=True)
class ServerSettings:
    model_name: str = "SmolLM2-135M-Instruct"
    max_tokens: int = 1024  # the most a request may ask for (larger: 400)
    default_max_tokens: int = 256  # chat requests that do not say
    api_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY  # request body bytes (larger: 413, before parsing)
    sot: SkeletonPlanner = field(default_factory=SkeletonPlanner)


def create_app(backend: LocalBackend, settings: ServerSettings | None = None) -> FastAPI:
    cfg = settings or ServerSettings()
    app = FastAPI(title="parafill serve", docs_url=None, redoc_url=None, openapi_url=None)
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=cfg.max_body)
    if cfg.api_key:  # added last: runs first, so no body is read for a request without the key
        app.add_middleware(APIKeyGate, key=cfg.api_key)
    born = int(time.time())

    @app.get("/v1/models")
    async def models() -> ModelList:
        ids = (cfg.model_name, sot.NAME)
        return ModelList(data=[ModelCard(id=i, created=born) for i in ids])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest, request: Request) -> Response:
        return await _unless_gone(request, lambda: _chat(backend, cfg, req))

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await _unless_gone(request, lambda: _text(backend, cfg, req))

    return app


async def _unless_gone(request: Request, answer: Callable[[], Awaitable[Response]]) -> Response:
    """The handler's response; cancelled (whole responses included, not only streams) the
    moment the client disconnects, so nothing decodes on for nobody."""
    got = await unless_gone(request.receive, answer)
    return got if got is not None else Response(status_code=499)  # nobody reads it


async def _chat(backend: LocalBackend, cfg: ServerSettings, req: ChatRequest) -> Response:
    _check_common(cfg, req)
    if not req.messages:
        raise APIError(400, "messages must contain at least one message", param="messages")
    msgs = tuple(m.to_message() for m in req.messages)
    ids = await anyio.to_thread.run_sync(backend.encode, msgs)  # seconds for a huge prompt
    if req.model == sot.NAME:
        return await _sot(backend, cfg, req, ids)
    job = _job("chat", backend, cfg, req, ids, "messages")
    return await _respond(backend, job, req.stream)


async def _text(backend: LocalBackend, cfg: ServerSettings, req: CompletionRequest) -> Response:
    _check_common(cfg, req)
    if req.model == sot.NAME:
        raise APIError(
            400,
            f"{sot.NAME} is a chat model: use /v1/chat/completions",
            param="model",
            code="model_not_supported",
        )
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, list):
        ids = [int(i) for i in prompt]
    else:
        encode = partial(backend.tokenizer.encode, prompt, add_special_tokens=False)
        ids = list(await anyio.to_thread.run_sync(encode))
    _check_ids(backend, ids)
    job = _job("text", backend, cfg, req, ids, "prompt")
    return await _respond(backend, job, req.stream)


def _check_ids(backend: LocalBackend, ids: list[int]) -> None:
    """A prompt of raw ids must name tokens of the vocabulary: refused here, before the engine,
    where an unknown id would fail the forward pass of every request sharing its step."""
    vocab = _vocab(backend)
    if bad := [t for t in ids if not 0 <= t < vocab]:
        shown = ", ".join(str(t) for t in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise APIError(
            400,
            f"prompt has token ids outside the vocabulary (0..{vocab - 1}): {shown}",
            param="prompt",
            code="invalid_value",
        )


def _vocab(backend: LocalBackend) -> int:
    """Token ids a request may name: those both the tokenizer and the model know."""
    return min(len(backend.tokenizer), backend.limits.vocab)


def _check_common(cfg: ServerSettings, req: ChatRequest | CompletionRequest) -> None:
    if req.model not in (cfg.model_name, sot.NAME):
        raise APIError(
            404,
            f"the model {req.model!r} does not exist; this server has "
            f"{cfg.model_name!r} and {sot.NAME!r}",
            param="model",
            code="model_not_found",
        )
    if bad := unsupported(req):
        raise APIError(400, bad[1], param=bad[0], code="unsupported_parameter")
    if (asked := req.limit) is not None and asked > cfg.max_tokens:
        name = (
            "max_completion_tokens"
            if isinstance(req, ChatRequest) and req.max_completion_tokens
            else "max_tokens"
        )
        raise APIError(
            400,
            f"{name} is {asked}, over this server's limit of {cfg.max_tokens}",
            param=name,
            code="max_tokens_over_limit",
        )


def _room(
    backend: LocalBackend, cfg: ServerSettings, n_prompt: int, asked: int | None, param: str
) -> int:
    """Tokens to generate: as asked, or the default cut to what the context leaves."""
    # the engines' submit checks the same bound, but a request must be refused before its
    # stream starts
    context = backend.limits.max_request_tokens  # prompt + completion, one sequence
    if n_prompt == 0:
        raise APIError(400, f"{param} is empty", param=param)
    want = asked or min(cfg.default_max_tokens, cfg.max_tokens)
    if asked is None and n_prompt < context:
        want = min(want, context - n_prompt)
    if n_prompt + want > context:
        raise APIError(
            400,
            f"this model's context holds {context} tokens; the {param} has "
            f"{n_prompt} and max_tokens asks for {want}",
            param=param,
            code="context_length_exceeded",
        )
    return want


def _job(
    kind: Kind,
    backend: LocalBackend,
    cfg: ServerSettings,
    req: ChatRequest | CompletionRequest,
    ids: list[int],
    param: str,
) -> Job:
    n = _room(backend, cfg, len(ids), req.limit, param)
    logprobs = isinstance(req, ChatRequest) and req.logprobs is True
    top = (req.top_logprobs or 0) if isinstance(req, ChatRequest) and logprobs else 0
    vocab = _vocab(backend)
    if bad := [t for t, _ in req.bias if t >= vocab]:
        raise APIError(
            400,
            f"logit_bias names token ids outside the vocabulary (0..{vocab - 1}): {bad}",
            param="logit_bias",
            code="invalid_value",
        )
    s = Sampling(
        max_tokens=n,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stops,
        top_logprobs=top,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        logit_bias=req.bias,
        repetition_penalty=req.repetition_penalty,
        stop_on_repeat=req.stop_on_repeat,
        lexical=req.lexical,
    )
    engine = backend.engine
    if req.filler == "draft" and isinstance(engine, Engine) and engine.draft_model is None:
        raise APIError(
            400,
            "filler 'draft' needs a draft model: start the server with --draft-model PATH",
            param="filler",
            code="invalid_value",
        )
    job = Job.new(kind, req.model, ids, s, req.include_usage, logprobs, req.n)
    return replace(job, filler=req.filler, constraint=_constraint(backend, req))


def _constraint(backend: LocalBackend, req: ChatRequest | CompletionRequest) -> Constraint | None:
    """`response_format` as an output constraint, compiled now (cached) so that a schema the
    grammar library cannot take is a 400 with its reason before any token is generated."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    assert fmt.type == "json_object" or fmt.json_schema is not None  # checked by the model
    try:
        c = json_object() if fmt.json_schema is None else json_schema(fmt.json_schema.schema_)
        backend.compile(c)
    except ConstraintError as exc:
        raise APIError(400, str(exc), param="response_format", code="invalid_value") from exc
    return c


async def _respond(backend: LocalBackend, job: Job, streaming: bool) -> Response:
    if streaming:
        return EventStream(direct.stream(backend, job), _describe)
    try:
        whole = await direct.complete(backend, job)
    except Exception as exc:  # n choices run in a task group: look inside its ExceptionGroup
        if isinstance(real := real_error(exc), BackendError):
            raise APIError(500, f"generation failed: {real}") from real
        raise
    return JSONResponse(whole.model_dump(exclude_none=True))


async def _sot(
    backend: LocalBackend, cfg: ServerSettings, req: ChatRequest, ids: list[int]
) -> Response:
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise APIError(400, f"{sot.NAME} needs a user message (the question)", param="messages")
    if req.logprobs:
        raise APIError(
            400,
            f"logprobs are not available for {sot.NAME}",
            param="logprobs",
            code="unsupported_parameter",
        )
    if req.n != 1:
        raise APIError(
            400,
            f"n > 1 is not available for {sot.NAME}",
            param="n",
            code="unsupported_parameter",
        )
    adjusted = ["frequency_penalty", "presence_penalty", "logit_bias", "stop_on_repeat"]
    adjusted = [name for name in adjusted if getattr(req, name)]
    adjusted += ["repetition_penalty"] if req.repetition_penalty != 1.0 else []
    fmt = req.response_format
    adjusted += ["response_format"] if fmt is not None and fmt.type != "text" else []
    for name in adjusted[:1]:
        raise APIError(
            400,
            f"{name} is not available for {sot.NAME} (it decodes greedily, unadjusted)",
            param=name,
            code="unsupported_parameter",
        )
    question = users[-1].to_message().content
    planner = sot.planner_for(cfg.sot, req.limit)
    _room(backend, cfg, len(ids), planner.point_tokens, "messages")
    job = Job.new("chat", req.model, ids, Sampling(planner.point_tokens), req.include_usage)
    if req.stream:
        return EventStream(sot.stream(backend, planner, question, job), _describe)
    try:
        whole = await sot.complete(backend, planner, question, job)
    except Exception as exc:
        if isinstance(real := real_error(exc), RunFailed):
            raise APIError(500, f"{sot.NAME} failed: {real}") from real
        raise
    return JSONResponse(whole.model_dump(exclude_none=True))


def _describe(exc: Exception) -> dict[str, dict[str, str | None]]:
    real = real_error(exc)
    why = (
        str(real)
        if isinstance(real, BackendError | RunFailed)
        else f"{type(real).__name__}: {real}"
    )
    return APIError(500, f"generation failed: {why}").body()
