"""gRPC plumbing shared by the services and their clients: servers, channels, retries.

Every server answers a Refused (quarry/access/admin_auth.py) raised by a servicer or the rules
it calls with that exception's status code and message, so the rules need no gRPC context.

Every server and every async channel made here is measured by an interceptor: calls by
method and status code, latency per method, and calls in flight (open watch streams
included), as quarry_grpc_server_* and quarry_grpc_client_* metrics. The method is the
only label beside the code, so cardinality stays bounded by the protos. Streaming calls
are counted and shown in flight but not timed: a watch stream lasts for hours and would
drown the latency of the unary calls. Each method a server registers, and each method of
the stubs made on an async channel, starts at zero (docs/observability.md, "Conventions").

Every server also answers the standard gRPC health check (grpc.health.v1.Health), which
Kubernetes' grpc probes and grpc_health_probe call. It answers SERVING for the server as a
whole (service ""): a process starts its gRPC server only once its store is open, so an
answer at all means it is ready.

Every server also checks admin calls (quarry/access/admin_auth.py): an interceptor, in its own
section below, refuses an RPC of the admin method table without a token of a high enough
role and records each admin call in the audit log. Channels send a token: the admin
channels (sync_channel) the CLI's, the long-running ones (aio_channel) the service token.

Every server and channel of Quarry is made here, so QUARRY_INTERNAL_TLS switches them all
to mutual TLS at once (quarry/encryption/internal_tls.py): servers require a client certificate from
the internal CA, channels present this process's certificate and check the server's.
The health service is on the same TLS port; Kubernetes probes the metrics port's /readyz
instead, since the kubelet's gRPC probe cannot do TLS (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import Counter, Gauge, Histogram

from quarry.access.admin_auth import (
    ADMIN_METHODS,
    AdminGate,
    Principal,
    Refused,
    RemoteTokenAuthority,
    TokenAuthority,
    bearer_token,
    cli_admin_token,
    service_token,
    serving_caller,
)
from quarry.encryption.internal_tls import internal_tls_files
from quarry.runtime.loop_watch import start_loop_watch
from quarry.runtime.metrics_endpoint import mark_ready
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

GRPC_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)

SERVER_CALLS = Counter(
    "quarry_grpc_server_calls_total",
    "gRPC calls this process served, by full method name and status code (OK, NOT_FOUND, ...).",
    ["method", "code"],
)
SERVER_CALL_SECONDS = Histogram(
    "quarry_grpc_server_call_duration_seconds",
    "Time this process took to answer a unary gRPC call, by method.",
    ["method"],
    buckets=GRPC_LATENCY_BUCKETS,
)
SERVER_CALLS_IN_FLIGHT = Gauge(
    "quarry_grpc_server_calls_in_flight",
    "gRPC calls being served now, by method (open watch streams included).",
    ["method"],
    multiprocess_mode="livesum",
)
CLIENT_CALLS = Counter(
    "quarry_grpc_client_calls_total",
    "gRPC calls this process made, by full method name and status code.",
    ["method", "code"],
)
CLIENT_CALL_SECONDS = Histogram(
    "quarry_grpc_client_call_duration_seconds",
    "Time a unary gRPC call this process made took, answer included, by method.",
    ["method"],
    buckets=GRPC_LATENCY_BUCKETS,
)
CLIENT_CALLS_IN_FLIGHT = Gauge(
    "quarry_grpc_client_calls_in_flight",
    "gRPC calls this process is waiting on now, by method (open watch streams included).",
    ["method"],
    multiprocess_mode="livesum",
)

# Generous limits: a config or a campaign report can be several MB.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]
# A restarted service must be found again at once (docs/faults.md). gRPC's own reconnect
# back-off starts at 1 s and grows by 1.6x up to 120 s, so after an outage of some seconds
# a channel could wait many more before its next attempt. Bounded here for every channel:
# the attempts come 0.1 s apart at first and never more than RECONNECT_BACKOFF_MAX_S apart.
RECONNECT_BACKOFF_MAX_S = 1.0
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", int(RECONNECT_BACKOFF_MAX_S * 1000)),
]


async def serve_grpc(
    bind: str,
    register: Callable[[grpc.aio.Server], None],
    name: str,
    token_authority: TokenAuthority | None = None,
) -> grpc.aio.Server:
    """Start an aio gRPC server on bind (host:port) with the servicers `register` adds.

    Admin calls are checked against token_authority; by default the enroll service's,
    asked over gRPC (the enroll service passes its own store).
    """
    settings = Settings.from_env()
    if token_authority is None:
        token_authority = RemoteTokenAuthority(aio_channel(settings.service_addr("enroll")))
    gate = AdminGate(token_authority, name, service_token(settings))
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        # The first is outermost: the refusal is an aborted call by the time the others
        # see its end, so metrics and the audit log record its status code.
        interceptors=[ServerMetricsInterceptor(), AdminAuthInterceptor(gate), RefusalInterceptor()],
    )
    served = _MethodRecorder(server)
    register(served)  # type: ignore[arg-type]
    add_health_service(served)  # type: ignore[arg-type]
    export_server_methods(served.methods)
    start_loop_watch()
    if _add_port(server, bind, settings) == 0:
        raise RuntimeError(f"{name}: cannot listen on {bind}")
    await server.start()
    mark_ready()
    log.info(
        "%s gRPC listening on %s (%s)",
        name,
        bind,
        "mutual TLS" if settings.internal_tls else "plaintext",
    )
    return server


def _add_port(server: grpc.aio.Server, bind: str, settings: Settings) -> int:
    if not settings.internal_tls:
        return server.add_insecure_port(bind)
    return server.add_secure_port(bind, server_credentials(settings))


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """This process's certificate; clients must present one signed by the internal CA."""
    ca, cert, key = internal_tls_files(settings).read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """Trust only the internal CA, and present this process's certificate."""
    ca, cert, key = internal_tls_files(settings).read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def channel_options(settings: Settings) -> list[tuple[str, object]]:
    """The options of every channel Quarry makes (the CLI's included)."""
    options = [*CHANNEL_OPTIONS, *RECONNECT_OPTIONS]
    if settings.internal_tls and settings.internal_tls_server_name:
        # Check the server's certificate against this name, whatever the address says.
        options.append(("grpc.ssl_target_name_override", settings.internal_tls_server_name))
    return options


def add_health_service(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """Register grpc.health.v1.Health on server; it answers SERVING for service ""."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def aio_channel(
    addr: str, token: str | None = None, settings: Settings | None = None
) -> grpc.aio.Channel:
    """A channel for long-running processes; its calls are measured and carry token, and
    the methods of every stub made on it start at zero in the metrics (MeasuredChannel).

    By default the service token of this process's settings; settings (by default this
    process's environment) also say whether the channel uses internal TLS.
    """
    settings = settings or Settings.from_env()
    if token is None:
        token = service_token(settings)
    interceptors = [UnaryUnaryMetricsInterceptor(token), UnaryStreamMetricsInterceptor(token)]
    options = channel_options(settings)
    if settings.internal_tls:
        channel = grpc.aio.secure_channel(
            addr, channel_credentials(settings), options=options, interceptors=interceptors
        )
    else:
        channel = grpc.aio.insecure_channel(addr, options=options, interceptors=interceptors)
    return MeasuredChannel(channel)


def sync_channel(
    addr: str, token: str | None = None, settings: Settings | None = None
) -> grpc.Channel:
    """A channel for the admin commands: short-lived, nothing scrapes them, so unmeasured.

    Its calls carry token, by default the CLI's (QUARRY_ADMIN_TOKEN or state_dir/admin_token).
    With internal TLS on, the CLI presents the internal certificate like any process.
    """
    settings = settings or Settings.from_env()
    if settings.internal_tls:
        channel = grpc.secure_channel(
            addr, channel_credentials(settings), options=channel_options(settings)
        )
    else:
        channel = grpc.insecure_channel(addr, options=channel_options(settings))
    if token is None:
        token = cli_admin_token(settings)
    if not token:
        return channel
    return grpc.intercept_channel(channel, SyncBearerTokenInterceptor(token))


async def run_forever_with_reconnect(
    name: str,
    stream_once: Callable[[], Awaitable[None]],
    max_backoff_s: float = RECONNECT_BACKOFF_MAX_S,
) -> None:
    """Run a watch stream for ever: when it ends or fails, reconnect with backoff
    (0.1 s doubling to max_backoff_s, so a restarted service is watched again at once)."""
    backoff = 0.1
    while True:
        try:
            await stream_once()
            backoff = 0.1
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.warning("%s watch: %s (%s); reconnecting", name, exc.code().name, exc.details())
        except Exception:
            log.exception("%s watch failed; reconnecting", name)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)


# --- server side ----------------------------------------------------------------------


class _MethodRecorder:
    """The server, noting each method a servicer registers (the generated add_*_to_server
    functions call add_registered_method_handlers), so its metrics start at zero."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.methods: dict[str, bool] = {}  # full method name -> unary answer (timed)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}"] = not handler.response_streaming
        self._server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def export_server_methods(methods: dict[str, bool]) -> None:
    """Every method's calls (code OK), in-flight gauge and, if unary, latency at zero: a
    service's rates and panels exist before its first call (docs/observability.md)."""
    for method, unary in methods.items():
        SERVER_CALLS.labels(method, grpc.StatusCode.OK.name)
        SERVER_CALLS_IN_FLIGHT.labels(method)
        if unary:
            SERVER_CALL_SECONDS.labels(method)


class ServerMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each unary-unary and unary-stream handler to count, time and track its calls."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        return _wrapped(
            handler,
            lambda behavior: _measured_unary(behavior, method),
            lambda behavior: _measured_stream(behavior, method),
        )


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def _wrapped(
    handler: grpc.RpcMethodHandler | None, unary: Wrapper, stream: Wrapper
) -> grpc.RpcMethodHandler | None:
    """The handler with its unary-unary or unary-stream behaviour wrapped."""
    if handler is None:
        return handler  # an unknown method: gRPC answers UNIMPLEMENTED itself
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=stream(handler.unary_stream))
    return handler


def _measured_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def measured(request: object, context: grpc.aio.ServicerContext) -> object:
        SERVER_CALLS_IN_FLIGHT.labels(method).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            response = behavior(request, context)
            if inspect.isawaitable(response):
                response = await response
            code = _servicer_code(context, grpc.StatusCode.OK)
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = _servicer_code(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            SERVER_CALLS_IN_FLIGHT.labels(method).dec()
            SERVER_CALLS.labels(method, code.name).inc()
            SERVER_CALL_SECONDS.labels(method).observe(time.perf_counter() - started)

    return measured


def _measured_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def measured(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        SERVER_CALLS_IN_FLIGHT.labels(method).inc()
        code = grpc.StatusCode.UNKNOWN
        try:
            async for message in behavior(request, context):
                yield message
            code = _servicer_code(context, grpc.StatusCode.OK)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED  # the client went away: how watches end
            raise
        except BaseException:
            code = _servicer_code(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            SERVER_CALLS_IN_FLIGHT.labels(method).dec()
            SERVER_CALLS.labels(method, code.name).inc()

    return measured


def _servicer_code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the servicer set (set_code, abort), else the default."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpcio versions hand back the number
        return next((c for c in grpc.StatusCode if c.value[0] == code), default)
    return default


class RefusalInterceptor(grpc.aio.ServerInterceptor):
    """Answers a Refused raised while a handler runs with its status code and message."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return _wrapped(handler, _answering_unary, _answering_stream)


def _answering_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def answering(request: object, context: grpc.aio.ServicerContext) -> object:
        try:
            response = behavior(request, context)
            if inspect.isawaitable(response):
                response = await response
            return response
        except Refused as refused:
            await context.abort(refused.code, refused.message)

    return answering


def _answering_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def answering(
        request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[object]:
        try:
            async for message in behavior(request, context):
                yield message
        except Refused as refused:
            await context.abort(refused.code, refused.message)

    return answering


# --- client side ----------------------------------------------------------------------


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    """details with `authorization: Bearer token` added, unless the caller set one."""
    if not token:
        return details
    metadata = list(details.metadata or ())
    if any(key.lower() == "authorization" for key, _ in metadata):
        return details
    metadata.append(("authorization", f"Bearer {token}"))
    return details._replace(metadata=grpc.aio.Metadata(*metadata))


class UnaryUnaryMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts and times each unary call; waits for its answer, then hands the call back."""

    def __init__(self, token: str = "") -> None:
        self._token = token

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Awaitable[grpc.aio.UnaryUnaryCall]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: object,
    ) -> grpc.aio.UnaryUnaryCall:
        client_call_details = _with_token(client_call_details, self._token)
        method = _method_name(client_call_details)
        CLIENT_CALLS_IN_FLIGHT.labels(method).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(client_call_details, request)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call  # the caller sees any error when it awaits the call in turn
            code = await call.code()
            return call
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            CLIENT_CALLS_IN_FLIGHT.labels(method).dec()
            CLIENT_CALLS.labels(method, code.name).inc()
            CLIENT_CALL_SECONDS.labels(method).observe(time.perf_counter() - started)


class UnaryStreamMetricsInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Counts each streaming call and keeps it in flight until it ends."""

    def __init__(self, token: str = "") -> None:
        self._token = token

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Awaitable[grpc.aio.UnaryStreamCall]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: object,
    ) -> grpc.aio.UnaryStreamCall:
        client_call_details = _with_token(client_call_details, self._token)
        method = _method_name(client_call_details)
        CLIENT_CALLS_IN_FLIGHT.labels(method).inc()
        call = await continuation(client_call_details, request)
        call.add_done_callback(lambda done: _count_finished_stream(done, method))
        return call


def export_client_methods(methods: dict[str, bool]) -> None:
    """Each method's calls (code OK), in-flight gauge and, if unary, latency at zero: as
    the server side's (export_server_methods), before this process's first call."""
    for method, unary in methods.items():
        CLIENT_CALLS.labels(method, grpc.StatusCode.OK.name)
        CLIENT_CALLS_IN_FLIGHT.labels(method)
        if unary:
            CLIENT_CALL_SECONDS.labels(method)


class MeasuredChannel(grpc.aio.Channel):
    """An async channel whose stubs' methods start at zero in the client metrics.

    A generated stub asks its channel for one callable per method of its service when it
    is made, so the methods a process may call are known then, bounded by the protos
    (docs/observability.md, "Conventions"). Everything else is the wrapped channel's.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._exported: set[str] = set()  # a stub made per call (health checks) adds none

    def _export(self, method: str, unary: bool) -> None:
        if method not in self._exported:
            self._exported.add(method)
            export_client_methods({method: unary})

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._export(method, unary=True)
        return self._channel.unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._export(method, unary=False)
        return self._channel.unary_stream(method, *args, **kwargs)

    # Client streams: no proto has one, and the interceptors measure none.
    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(method, *args, **kwargs)

    async def __aenter__(self) -> MeasuredChannel:
        await self._channel.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._channel.__aexit__(*exc_info)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


def _count_finished_stream(call: grpc.aio.Call, method: str) -> None:
    CLIENT_CALLS_IN_FLIGHT.labels(method).dec()
    # The call is done, so its code is ready; Call.code() is a coroutine nonetheless.
    code_ready = asyncio.ensure_future(call.code())
    code_ready.add_done_callback(
        lambda ready: CLIENT_CALLS.labels(method, _finished_code(ready).name).inc()
    )


def _finished_code(ready: asyncio.Future[grpc.StatusCode]) -> grpc.StatusCode:
    if ready.cancelled() or ready.exception() is not None:
        return grpc.StatusCode.UNKNOWN
    return ready.result()


class _SyncCallDetails(
    collections.namedtuple(
        "_SyncCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class SyncBearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor
):
    """Adds `authorization: Bearer <token>` to each call of a sync (admin) channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncCallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: object
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: object
    ) -> Any:
        return continuation(self._details(details), request)


# --- admin calls: authentication and the audit log ------------------------------------


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Guards the methods of the admin table: token, role, then an audit entry per call."""

    def __init__(self, gate: AdminGate) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method not in ADMIN_METHODS:
            return handler
        return _wrapped(
            handler,
            lambda behavior: _guarded_unary(behavior, method, self._gate),
            lambda behavior: _guarded_stream(behavior, method, self._gate),
        )


async def _admit_or_abort(
    gate: AdminGate, method: str, request: object, context: grpc.aio.ServicerContext
) -> Principal:
    try:
        return await gate.admit(method, bearer_token(_metadata_pairs(context)))
    except Refused as refused:
        await gate.record(method, refused.principal, refused.code.name, request)
        await context.abort(refused.code, refused.message)
        raise  # abort raises; this line only tells readers and type checkers so


def _metadata_pairs(context: grpc.aio.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [(item[0], item[1]) for item in context.invocation_metadata() or ()]


def _guarded_unary(
    behavior: Callable[..., Any], method: str, gate: AdminGate
) -> Callable[..., Any]:
    async def guarded(request: object, context: grpc.aio.ServicerContext) -> object:
        principal = await _admit_or_abort(gate, method, request, context)
        code = grpc.StatusCode.UNKNOWN
        try:
            with serving_caller(principal):
                response = behavior(request, context)
                if inspect.isawaitable(response):
                    response = await response
            code = _servicer_code(context, grpc.StatusCode.OK)
            return response
        except BaseException:
            code = _servicer_code(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            await gate.record(method, principal, code.name, request)

    return guarded


def _guarded_stream(
    behavior: Callable[..., Any], method: str, gate: AdminGate
) -> Callable[..., Any]:
    async def guarded(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        principal = await _admit_or_abort(gate, method, request, context)
        # A stream is recorded when it opens: it may stay open for a long time.
        await gate.record(method, principal, "OPENED", request)
        async for message in behavior(request, context):
            yield message

    return guarded
