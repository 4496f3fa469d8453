"""The HTTP JSON API on LitServe: `POST /predict`, `POST /recommend` (`GET /health` is LitServe's).

Each endpoint is a `LitAPI` whose worker process loads the model once (`setup`) and answers from
it. Requests are typed pydantic models, so FastAPI validates them in the server process: bad JSON
or wrong types get a 422 with the field and reason, never reaching a worker (LitServe would answer
an undecodable untyped request with a 500). What depends on the model (k above the number of
items, a rating off the scale, more pairs than `max_pairs`) is checked in the worker and answered
with a 4xx (`HTTPException` crosses LitServe's process boundary with its status). `BodyLimit`
refuses bodies over `max_body_bytes` with a 413 before they are parsed.

    POST /predict    {"pairs": [[user, item], ...]}       -> {"predictions": [...], "fallback": [...]}
    POST /recommend  {"user": id, "k": 10}                 -> {"items": [...], "scores": [...]}
                     {"user": [[item, rating], ...], "k": 10}   (a new user, folded in for the request)
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as the
# request type, and a string there would make FastAPI look for a query parameter instead.
import json
import math
from typing import Annotated, Any, Union

import litserve as ls
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from lightning_mf.errors import DataError

# Hard caps of the request types; the configurable limits (`max_pairs`, `max_k`) are checked in the workers.
PAIRS_CAP = 100_000
K_CAP = 10_000

Id = Union[StrictInt, Annotated[StrictStr, Field(min_length=1, max_length=200)]]
Rating = Annotated[float, Field(allow_inf_nan=False)]


class PredictRequest(BaseModel):
    """`{"pairs": [[user, item], ...]}`: raw ids, integers or strings."""

    model_config = ConfigDict(extra="forbid")
    pairs: list[tuple[Id, Id]] = Field(min_length=1, max_length=PAIRS_CAP)


class RecommendRequest(BaseModel):
    """`{"user": id or [[item, rating], ...], "k": 10, "exclude_seen": true}`."""

    model_config = ConfigDict(extra="forbid")
    user: Union[Id, Annotated[list[tuple[Id, Rating]], Field(min_length=1, max_length=PAIRS_CAP)]]
    k: int = Field(10, ge=1, le=K_CAP, strict=True)
    exclude_seen: bool = Field(True, strict=True)


class _ModelAPI(ls.LitAPI):
    """Loads the model in its worker; `DataError` from the model becomes a 422."""

    def __init__(self, api_path: str, ckpt_path: str, data_dir: str | None, ratings: str | None,
                 max_pairs: int, max_k: int, threads: int) -> None:
        super().__init__(api_path=api_path)
        self.ckpt_path, self.data_dir, self.ratings = ckpt_path, data_dir, ratings
        self.max_pairs, self.max_k, self.threads = max_pairs, max_k, threads

    def setup(self, device: str) -> None:
        import signal

        import torch

        # Ctrl-C in a terminal reaches every process of the group; `serve` stops the workers itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        from lightning_mf.inference.loading import load

        torch.set_num_threads(self.threads)
        self.model = load(self.ckpt_path, data_dir=self.data_dir, device=device)
        if self.ratings:
            self.model.fold_in(self.ratings)

    def _too_many(self, count: int, what: str) -> None:
        if count > self.max_pairs:
            raise HTTPException(413, f"{count} {what} in one request; at most {self.max_pairs} (serve --max_pairs)")


class PredictAPI(_ModelAPI):
    """`POST /predict`."""

    def decode_request(self, request: PredictRequest) -> PredictRequest:
        self._too_many(len(request.pairs), "pairs")
        return request

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        users, items = zip(*request.pairs)
        try:
            frame = self.model.predict(list(users), list(items))
        except DataError as error:
            raise HTTPException(422, str(error)) from None
        return {"predictions": frame["prediction"].to_list(), "fallback": frame["fallback"].to_list()}


class RecommendAPI(_ModelAPI):
    """`POST /recommend`."""

    def decode_request(self, request: RecommendRequest) -> RecommendRequest:
        limit = min(self.max_k, len(self.model.items))
        if request.k > limit:
            raise HTTPException(422, f"k={request.k} is out of range: at most {limit} (the model has "
                                     f"{len(self.model.items)} items; serve --max_k is {self.max_k})")
        if isinstance(request.user, list):
            self._too_many(len(request.user), "ratings")
        return request

    def predict(self, request: RecommendRequest) -> dict[str, Any]:
        try:
            if isinstance(request.user, list):
                items, ratings = zip(*request.user)
                tables = self.model.state.tables
                off_scale = [r for r in ratings if not tables.rating_min <= r <= tables.rating_max]
                if off_scale:
                    raise DataError(f"rating {off_scale[0]} is off the model's scale "
                                    f"[{tables.rating_min:g}, {tables.rating_max:g}]")
                frame = self.model.recommend_for_ratings(list(items), list(ratings), request.k, request.exclude_seen)
            else:
                frame = self.model.recommend([request.user], request.k, exclude_seen=request.exclude_seen)
        except DataError as error:
            raise HTTPException(422, str(error)) from None
        scores = [None if math.isnan(s) else s for s in frame["score"].to_list()]
        return {"items": frame["item"].to_list(), "scores": scores}


class BodyLimit:
    """ASGI middleware: a 413 for a request body over `max_bytes`, by its Content-Length or as it streams.

    Args:
        app: The ASGI app it wraps.
        max_bytes: Largest body accepted.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send, length.decode("latin-1"))
            return
        # No (or a small) declared length: read the body here, up to the limit, then replay it.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes}")
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps({"detail": f"request body of {size} bytes is over the limit of {self.max_bytes} bytes "
                                     "(serve --max_body_kb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 without the `input` it echoes (a whole oversized body); says to send JSON."""
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
               for e in error.errors()[:20]]
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        details.insert(0, {"loc": ["header", "content-type"], "type": "content_type",
                           "msg": f"send a JSON body with Content-Type: application/json (got {content_type!r})"})
    return JSONResponse({"detail": details}, status_code=422)


def build_server(ckpt_path: str, data_dir: str | None = None, ratings: str | None = None, accelerator: str = "auto",
                 workers_per_device: int = 1, max_pairs: int = 10_000, max_k: int = 1_000, max_body_bytes: int = 1 << 20,
                 threads: int = 1, timeout: float = 30.0) -> ls.LitServer:
    """The LitServer with both endpoints (see `serve_command` for the arguments)."""
    options = {"ckpt_path": ckpt_path, "data_dir": data_dir, "ratings": ratings, "max_pairs": max_pairs,
               "max_k": max_k, "threads": threads}
    apis = [PredictAPI("/predict", **options), RecommendAPI("/recommend", **options)]
    server = ls.LitServer(apis, accelerator=accelerator, workers_per_device=workers_per_device, timeout=timeout,
                          middlewares=[(BodyLimit, {"max_bytes": max_body_bytes})])
    server.app.add_exception_handler(RequestValidationError, validation_error)
    server.uvicorn_graceful_timeout = 5  # seconds a stopping server waits for open connections
    return server
