"""The ASGI inference service: TorchServe and Open Inference Protocol v2 routes.

Routes and error handlers are module-level functions that find the service in
``request.app.state.service``; the protocols' codecs are in :mod:`inferwatch.serve.protocols`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from threadpoolctl import threadpool_limits

import inferwatch
from inferwatch.metrics import InferenceMetrics, model_from_path
from inferwatch.metrics.exposition import render_exposition
from inferwatch.metrics.feedback import FeedbackStore, RequestIds, answer_key
from inferwatch.metrics.gpu import GPUCollector
from inferwatch.metrics.instruments import RequestRecorder
from inferwatch.metrics.names import reason_for_status
from inferwatch.metrics.quality import QualityMetrics, QualityMonitor, QualityWorker
from inferwatch.models import (
    InputError,
    ServedModel,
    decode_image,
    load_image,
    load_model,
    open_image,
)
from inferwatch.serve.batching import BatchResult, MicroBatcher, QueueFullError
from inferwatch.serve.errors import InferenceError, error_response
from inferwatch.serve.faults import Faults
from inferwatch.serve.openapi import openapi_document
from inferwatch.serve.protocols import (
    CLASSIFIER_OUTPUTS,
    EXTENSIONS,
    InferRequest,
    decode_infer_request,
    decode_predictions_body,
    encode_classification,
    encode_error,
    encode_top_classes,
    parse_json,
)

log = logging.getLogger("inferwatch.serve")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: "$" would pass "id\n"
# A model call under this runs on the event loop, not the batch thread (see MicroBatcher): the
# digits model's calls take 10-60 us, resnet18's tens of milliseconds.
INLINE_COMPUTE_SECONDS = 0.0005
# An image is decoded on the event loop only when it is sure to be cheap, else in a thread:
# the hand-off costs about what decoding an 8x8 digit does. A small body bounds what opening
# it may inflate (a PNG's text chunks: 64 MB in 0.3 s from 74 KB), few pixels the decoding.
INLINE_IMAGE_BYTES = 1024
INLINE_IMAGE_PIXELS = 64 * 64

@dataclass
class ServeConfig:
    models: Sequence[str] = ("digits",)
    resnet18_weights: Path | None = None
    max_batch_size: int | None = None  # None: the model's own preference
    max_wait_ms: float = 0.0  # 0: greedy, batches form only while the model is busy
    queue_capacity: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    # Decoding costs width x height (4 bytes a pixel in RGBA, more while converting), however
    # small the body. 16.7 Mpx holds a 12 Mpx phone photo; the models take 8x8 and 224x224.
    max_image_pixels: int = 4096 * 4096
    latency_buckets: Sequence[float] | None = None
    quality: bool = True  # confidence, class mix, drift and feedback accuracy
    # False: no recorder, no instrument call per request, no /metrics; only to measure
    # what the instrumentation costs (bench/overhead.py). Turns quality tracking off too.
    metrics: bool = True


@dataclass
class _Deployment:
    model: ServedModel
    batcher: MicroBatcher
    quality: QualityMonitor | None = None
    recorder: RequestRecorder | None = None


class InferenceService:
    """The models, their batchers and metrics; the routes, module-level functions, find it
    in ``request.app.state.service`` and are thin wrappers around ``infer``."""

    def __init__(self, config: ServeConfig, registry: CollectorRegistry | None = None,
                 scrape_registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or _default_registry()
        # What /metrics exposes: the metrics' own registry, or with several worker processes
        # one that reads every worker's shared values.
        self.scrape_registry = scrape_registry or self.registry
        loaded = [load_model(name, resnet18_weights=config.resnet18_weights)
                  for name in dict.fromkeys(config.models)]
        kwargs = {"latency_buckets": config.latency_buckets} if config.latency_buckets else {}
        self.metrics = InferenceMetrics(
            {m.card.name: m.card.version for m in loaded}, registry=self.registry, **kwargs
        ) if config.metrics else None
        self.faults = Faults()
        self.quality_metrics = QualityMetrics(self.registry)
        self.feedback = FeedbackStore()
        self.request_ids = RequestIds()
        # Few threads: each may hold a decoded image of up to max_image_pixels.
        self.decoders = ThreadPoolExecutor(min(4, os.cpu_count() or 1),
                                           thread_name_prefix="inferwatch-decode")
        self.deployments: dict[str, _Deployment] = {}
        for model in loaded:
            card = model.card
            recorder = self.metrics.recorder(card.name) if self.metrics else None
            quality = QualityMonitor(
                self.quality_metrics, card.name, card.version, card.labels,
                model.quality_reference, model.features
            ) if config.quality and config.metrics else None
            batcher = MicroBatcher(
                model.predict_proba,
                max_batch_size=config.max_batch_size or model.max_batch_size,
                max_wait=config.max_wait_ms / 1000.0,
                capacity=config.queue_capacity,
                on_batch=_batch_observer(recorder, quality, self.feedback, card.name),
                queue_delay=functools.partial(self.faults.delay, "queue"),
                compute_delay=functools.partial(self.faults.delay, "compute"),
                inline_below=INLINE_COMPUTE_SECONDS,
                name=card.name,
            )
            if self.metrics is not None:
                batcher.on_depth = self.metrics.watch_queue(card.name, batcher.depth,
                                                            batcher.capacity)
                self.metrics.set_model_loaded(card.name, runtime=card.runtime,
                                              load_seconds=card.load_seconds,
                                              accuracy=card.heldout_accuracy)
            self.deployments[card.name] = _Deployment(model, batcher, quality, recorder)
            log.info("model %s version %s loaded in %.2fs (%s)%s", card.name, card.version,
                     card.load_seconds, card.runtime,
                     f", held-out accuracy {card.heldout_accuracy:.4f}"
                     if card.heldout_accuracy is not None else "")

    async def preprocess_faults(self) -> None:
        if self.faults.should_fail():
            raise InferenceError("injected", "failure injected by `inferwatch chaos errors`")
        delay = self.faults.delay("preprocess")
        if delay:
            await asyncio.sleep(delay)

    async def postprocess_faults(self) -> None:
        delay = self.faults.delay("postprocess")
        if delay:
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        for d in self.deployments.values():
            d.batcher.start()
        worker = QualityWorker([d.quality for d in self.deployments.values() if d.quality],
                               self.feedback)
        worker.start()
        try:
            yield
        finally:
            for d in self.deployments.values():
                await d.batcher.stop()
            await worker.stop()
            self.decoders.shutdown(wait=True)
            self.faults.clear()

    def deployment(self, name: str) -> _Deployment:
        found = self.deployments.get(name)
        if found is None:
            raise InferenceError(
                "unknown_model",
                f"model {name[:64]!r} is not served; served models: "
                f"{', '.join(self.deployments)}",
            )
        return found

    async def infer(self, name: str, samples: np.ndarray, preprocess_started: float,
                    request_id: str | int | None = None) -> tuple[BatchResult, float]:
        """The model's answer to ``samples``, and the seconds preprocessing took. The answer
        to one sample is kept under ``request_id`` (or the key :class:`RequestIds` drew
        with it), so labelled feedback can be scored."""
        d = self.deployments[name]
        samples = self.faults.drift_inputs(samples, d.model.card.input_range)
        preprocess_seconds = time.perf_counter() - preprocess_started
        if len(samples) > d.batcher.capacity:
            raise InferenceError("invalid_shape",
                                 f"at most {d.batcher.capacity} samples per request")
        try:
            result = await d.batcher.submit(samples, request_id if len(samples) == 1 else None)
        except QueueFullError as exc:
            raise InferenceError("overloaded", f"server overloaded: {exc}",
                                 {"Retry-After": "1"}) from None
        return result, preprocess_seconds

    def score_feedback(self, request_id: str, label: Any) -> dict[str, Any]:
        # No answer is kept under an id the service would not take (one it replaced).
        answer = (self.feedback.lookup(request_id) if _REQUEST_ID.fullmatch(request_id)
                  else "unknown_request_id")
        if isinstance(answer, str):
            raise InferenceError(answer, f"no answer to score for request id {request_id[:64]!r}"
                                 if answer == "unknown_request_id" else
                                 f"feedback for {request_id!r} was already counted")
        d = self.deployments[answer.model]
        labels = d.model.card.labels
        if isinstance(label, str) and label in labels:
            truth = labels.index(label)
        elif isinstance(label, int) and not isinstance(label, bool) and \
                0 <= label < len(labels):
            truth = label
        else:
            raise InferenceError("invalid_label", f"label must be one of model "
                                 f"{answer.model}'s labels (or an index below {len(labels)})")
        self.feedback.mark(request_id)
        assert d.quality is not None
        correct, in_top = d.quality.record_feedback(answer.top, truth)
        return {"request_id": request_id, "model": answer.model, "correct": correct,
                "top5_correct": in_top}


def _batch_observer(recorder: RequestRecorder | None, quality: QualityMonitor | None,
                    feedback: FeedbackStore, name: str
                    ) -> Callable[[np.ndarray, np.ndarray, list[Any]], None] | None:
    """What the batcher calls with each batch's inputs, outputs and request ids: the batch
    size for the metrics, the whole batch for quality tracking and the feedback store (one
    queued item each per batch, not per request)."""
    if recorder is None:
        return None
    if quality is None:
        return lambda samples, _, __: recorder.batch(len(samples))

    def observe(samples: np.ndarray, probabilities: np.ndarray, ids: list[Any]) -> None:
        recorder.batch(len(samples))
        quality.observe(probabilities, samples)  # folded in the background
        feedback.defer(name, ids, probabilities)

    return observe


def _default_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    GPUCollector(registry=registry)
    return registry


def prepare_serving_process() -> None:
    """Set up the process that serves the app, once the app is built: for that process only.

    - One BLAS thread. OpenBLAS hands a matrix product of a few hundred rows to a second
      thread, which then spins waiting for the next one: a digits batch of 256 samples (one
      v2 request may carry that many) cost 2.2 ms of CPU for a 65 us call, 90 us with one
      thread. Model calls here are small and one at a time; the other core is the service's
      (torch's threads are set apart, by INFERWATCH_TORCH_THREADS).
    - Everything alive after start-up (modules, the models) moved out of the collector's
      sight. Under load every full collection walked the ~120,000 objects that imports and
      models leave behind, about 25 ms each, three a second (32 requests in flight are
      promoted to the old generation at every second-generation pass): 10 us per request of
      `serve`'s 90-120 (bench/overhead.py). Frozen objects are never collected, so nothing
      that becomes garbage later may be among them.
    """
    threadpool_limits(1, user_api="blas")
    gc.collect()
    gc.freeze()


def create_app(
    config: ServeConfig | None = None, registry: CollectorRegistry | None = None,
    *, scrape_registry: CollectorRegistry | None = None,
) -> Starlette:
    """The service as an ASGI app, its :class:`InferenceService` in ``app.state.service``.

    ``/metrics`` exposes ``scrape_registry`` when given, else ``registry``; with
    ``config.metrics`` False there is no ``/metrics``, and no request is counted.
    """
    disable_created_metrics()  # `_created` series double the exposition for no query we run
    service = InferenceService(config or ServeConfig(), registry, scrape_registry)
    app = Starlette(
        routes=[
            Route("/predictions/{model}", predictions, methods=["POST"]),
            Route("/v2/models/{model}/infer", v2_infer, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/infer", v2_infer, methods=["POST"]),
            Route("/v2/models/{model}", v2_metadata, methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}", v2_metadata, methods=["GET"]),
            Route("/v2/models/{model}/ready", v2_model_ready, methods=["GET"]),
            Route("/v2/models/{model}/versions/{version}/ready", v2_model_ready,
                  methods=["GET"]),
            Route("/v2", v2_server, methods=["GET"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
            Route("/v2/health/live", live, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/ping", ping, methods=["GET"]),
            *([Route("/metrics", metrics, methods=["GET"])] if service.metrics else []),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={InferenceError: _inference_error, HTTPException: _http_error,
                            Exception: _server_error},
        lifespan=service.lifespan,
    )
    app.router.redirect_slashes = False  # see inferwatch.stack.inbox
    app.state.service = service
    app.state.openapi = openapi_document({name: d.model.card.version
                                          for name, d in service.deployments.items()})
    return app


async def predictions(request: Request) -> Response:
    return await _answer(request, _decode_image, _top_classes)


async def v2_infer(request: Request) -> Response:
    return await _answer(request, _decode_v2, _v2_response)


async def feedback(request: Request) -> Response:
    service: InferenceService = request.app.state.service
    try:
        payload = parse_json(await read_body(request, 64 * 1024))
        if not isinstance(payload, dict) or not isinstance(payload.get("request_id"), str) \
                or "label" not in payload:
            raise InferenceError("invalid_json", 'expected {"request_id": "...", "label": "3"}')
        return JSONResponse(service.score_feedback(payload["request_id"], payload["label"]))
    except InferenceError as exc:
        service.quality_metrics.feedback_rejected.labels(exc.reason).inc()
        raise


async def v2_server(request: Request) -> Response:
    return JSONResponse({"name": "inferwatch", "version": inferwatch.__version__,
                         "extensions": list(EXTENSIONS)})


async def v2_model_ready(request: Request) -> Response:
    return JSONResponse({"name": _v2_model(request).card.name, "ready": True})


async def v2_metadata(request: Request) -> Response:
    card = _v2_model(request).card
    return JSONResponse({
        "name": card.name,
        "versions": [card.version],
        "platform": card.runtime,
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, *card.input_shape]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32",
                     "shape": [-1, len(card.labels)]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    })


async def models(request: Request) -> Response:
    service: InferenceService = request.app.state.service
    return JSONResponse({"models": [
        {"modelName": d.model.card.name, "modelVersion": d.model.card.version}
        for d in service.deployments.values()
    ]})


async def ping(request: Request) -> Response:
    return JSONResponse({"status": "Healthy"})


async def ready(request: Request) -> Response:
    return JSONResponse({"ready": True})


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def metrics(request: Request) -> Response:
    service: InferenceService = request.app.state.service
    body, content_type = render_exposition(service.scrape_registry,
                                           request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


# An inference route's protocol: its body to samples (and the OIP request, with its id and
# the outputs it asks for), and the model's answer to a response.
Decoder = Callable[[InferenceService, ServedModel, Request, bytes],
                   Awaitable[tuple[np.ndarray, InferRequest | None]]]
Responder = Callable[[ServedModel, np.ndarray, str, InferRequest | None], Response]


async def _answer(request: Request, decode: Decoder, respond: Responder) -> Response:
    """An inference route: the parts its protocol does not change, timed and counted.

    A success is one record (:class:`RequestRecorder`), kept in bounds by the batch
    observer's ``recorder.batch`` per model call; a failure is counted by the exception
    handlers below, from the route's path.
    """
    service: InferenceService = request.app.state.service
    name = request.path_params["model"]
    d = service.deployment(name)
    recorder = d.recorder
    started = time.perf_counter()
    if recorder is not None:
        recorder.active += 1
    try:
        body = await read_body(request, service.config.max_body_bytes)
        start = time.perf_counter()
        await service.preprocess_faults()
        samples, asked = await decode(service, d.model, request, body)
        request_id, key = _request_id(request, asked, service.request_ids)
        result, preprocess = await service.infer(name, samples, start, key)
        post = time.perf_counter()
        await service.postprocess_faults()
        response = respond(d.model, result.probabilities, request_id, asked)
        if recorder is not None:  # RequestRecorder.succeeded, without a Python call
            recorder._append(recorder._pack(started, preprocess, result.queue_seconds,
                                            result.compute_seconds, post,
                                            time.perf_counter(), request_id.encode()))
        return response
    finally:
        if recorder is not None:
            recorder.active -= 1


async def _decode_image(service: InferenceService, model: ServedModel, request: Request,
                        body: bytes) -> tuple[np.ndarray, None]:
    data = decode_predictions_body(body, request.headers.get("content-type", ""))
    max_pixels = service.config.max_image_pixels
    try:
        image = open_image(data, max_pixels) if len(data) <= INLINE_IMAGE_BYTES else None
        if image is not None and image.width * image.height <= INLINE_IMAGE_PIXELS:
            sample = model.from_image(load_image(image))
        else:
            sample = await asyncio.get_running_loop().run_in_executor(
                service.decoders, _image_sample, model, data, max_pixels)
    except InputError as exc:
        raise _input_error(exc) from None
    return sample[None], None


def _top_classes(model: ServedModel, probs: np.ndarray, request_id: str,
                 _: InferRequest | None) -> Response:
    return encode_top_classes(model.card.labels, probs[0], {"X-Request-ID": request_id})


async def _decode_v2(service: InferenceService, model: ServedModel, request: Request,
                     body: bytes) -> tuple[np.ndarray, InferRequest]:
    _check_version(model, request)
    asked = decode_infer_request(body, request.scope["headers"], service.config.max_body_bytes,
                                 CLASSIFIER_OUTPUTS)
    return _v2_samples(model, asked), asked


def _v2_response(model: ServedModel, probs: np.ndarray, request_id: str,
                 asked: InferRequest | None) -> Response:
    assert asked is not None
    card = model.card
    response = encode_classification(
        {"model_name": card.name, "model_version": card.version,
         "id": request_id if asked.id is None else asked.id}, probs, asked.outputs)
    if asked.id is not None and asked.id != request_id:  # the id feedback takes
        response.headers["X-Request-ID"] = request_id
    return response


def _v2_model(request: Request) -> ServedModel:
    service: InferenceService = request.app.state.service
    model = service.deployment(request.path_params["model"]).model
    _check_version(model, request)
    return model


def _check_version(model: ServedModel, request: Request) -> None:
    version = request.path_params.get("version")
    if version is not None and version != model.card.version:
        raise InferenceError("unknown_model",
                             f"model {model.card.name} has version {model.card.version}")


def _v2_samples(model: ServedModel, asked: InferRequest) -> np.ndarray:
    try:
        return model.from_tensor(asked.values)
    except InputError as exc:
        raise _input_error(exc) from None


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InferenceError("body_too_large", f"body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InferenceError("body_too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InferenceError("client_closed", "the client closed the connection before the "
                                              "body was complete") from None
    body = b"".join(chunks)
    if not body:
        raise InferenceError("empty_body", "the request body is empty")
    return body


def _request_id(request: Request, asked: InferRequest | None,
                ids: RequestIds) -> tuple[str, int]:
    """The id the request's answer is kept under for feedback, and its key
    (:func:`answer_key`): the id its body gave, else its X-Request-ID, the first of the two
    that the feedback route would take, else one drawn with its key."""
    given = asked.id if asked is not None else None
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given, answer_key(given)
    given = request.headers.get("x-request-id", "")
    return (given, answer_key(given)) if _REQUEST_ID.fullmatch(given) else ids.new()


def _input_error(exc: InputError) -> InferenceError:
    return InferenceError(exc.reason, str(exc))


def _image_sample(model: ServedModel, data: bytes, max_pixels: int) -> np.ndarray:
    return model.from_image(decode_image(data, max_pixels))


def _count_failure(request: Request, status: int, reason: str) -> None:
    model = model_from_path(request.scope["path"])
    service: InferenceService = request.app.state.service
    if service.metrics is not None and model is not None:
        service.metrics.observe_request(model, status, 0.0, reason)


def _failed(request: Request, reason: str, message: str, status: int,
            headers: Mapping[str, str] | None = None) -> Response:
    """The error answer, counted; under /v2 in OIP's form, its message in ``error``."""
    _count_failure(request, status, reason)
    path = request.scope["path"]
    encode = encode_error if path == "/v2" or path.startswith("/v2/") else error_response
    return encode(reason, message, status, headers)


async def _inference_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferenceError)
    return _failed(request, exc.reason, str(exc), exc.status, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's routing raises 404 and 405, its form parser 400.
    return _failed(request, reason_for_status(exc.status_code), str(exc.detail),
                   exc.status_code, exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """Starlette answers with this, then raises ``exc`` on for the server to log."""
    return _failed(request, "internal", "internal server error", 500)
