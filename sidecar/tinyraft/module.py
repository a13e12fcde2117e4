"""Module SDK: write a deterministic state machine in four methods, tinyraft replicates it.

    from tinyraft.module import Module, run_module

    class Counter(Module):
        def __init__(self) -> None:
            self.n = 0

        def apply(self, command: bytes, index: int) -> bytes:
            self.n += int(command)          # int() raises before anything changes
            return str(self.n).encode()

        def query(self, request: bytes) -> bytes:
            return str(self.n).encode()

        def snapshot(self) -> bytes:
            return str(self.n).encode()

        def restore(self, data: bytes) -> None:
            self.n = int(data or b"0")

    run_module(Counter(), "127.0.0.1:50061")

The SDK serves the `tinyraft.v1.Module` gRPC service (proto/tinyraft/v1/module.proto,
whose CONTRACT it implements), plus `grpc.health.v1` so Kubernetes probes can target the
app container. What it does for you, and what it asks of you:

- Order and idempotence. The SDK tracks the last applied index and refuses an Apply whose
  `after_index` is not it (FAILED_PRECONDITION): the sidecar then restores a snapshot and
  replays. Your `apply` sees each committed command exactly once, in log order.
- Errors in `apply`. An exception raised by `apply` becomes that command's result,
  `{"error":"<ExceptionType>: <message>"}` (compact JSON, UTF-8), and the rest of the batch
  still applies. The SDK does not roll back: `apply` must validate first and mutate after,
  so that raising leaves the state untouched. The message must be deterministic too
  (no addresses, times or ids in it): every replica returns the same bytes.
- Errors in `query` become INVALID_ARGUMENT with the exception's message.
- Snapshots. `snapshot` returns the whole state as bytes, or an iterable of byte pieces
  (a generator keeps memory flat for a large state); the SDK sends it in 64 KiB chunks.
  Apply and Restore wait while a Snapshot streams, so a lazy generator sees a frozen state.
- Restore. The SDK receives the whole stream before touching your state (a broken stream
  changes nothing), spooling it in memory up to 64 MiB and to a temporary file beyond.
  The default `restore_stream` joins the chunks and calls `restore(data)`, so the peak
  is about twice the snapshot size; override `restore_stream(chunks)` to consume the
  chunks one by one instead. Like `apply`, `restore` must parse first and replace after:
  if it raises, the Restore fails (INVALID_ARGUMENT) and the old state and index stand.
- Threads. Your methods run on the asyncio event loop thread, one at a time, so they need
  no locks but must be fast (microseconds per command): no blocking I/O, no sleeps.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import IO, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tinyraft import event_loop
from tinyraft.answers import as_results
from tinyraft.v1 import module_pb2 as pb
from tinyraft.v1 import module_pb2_grpc as pb_grpc

__all__ = [
    "CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "ListenError",
    "Module",
    "ModuleServicer",
    "error_result",
    "run_module",
    "serve_module",
]

CHUNK_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_SPOOL_MEMORY_BYTES = 64 * 1024 * 1024
_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Module"].full_name


class Module:
    """Subclass and override `apply`, `query`, `snapshot` and `restore`."""

    def apply(self, command: bytes, index: int) -> bytes:
        """Apply one committed command at Raft log `index`; return its result.

        Deterministic: read nothing but `command` and the state. Raise before mutating."""
        raise NotImplementedError

    def query(self, request: bytes) -> bytes:
        """Answer a read-only request; never change the state."""
        raise NotImplementedError

    def snapshot(self) -> bytes | Iterable[bytes]:
        """The whole state: bytes, or an iterable of pieces to stream."""
        raise NotImplementedError

    def restore(self, data: bytes) -> None:
        """Replace the whole state with `data`, a snapshot's bytes."""
        raise NotImplementedError

    def restore_stream(self, chunks: Iterable[bytes]) -> None:
        """Replace the whole state from a snapshot's chunks. Override to avoid holding the
        whole snapshot in memory; the default joins them and calls `restore`."""
        self.restore(b"".join(chunks))


class ListenError(ValueError):
    """The listen address is malformed or cannot be bound."""


def error_result(message: str) -> bytes:
    """The result bytes the SDK returns for a command whose `apply` raised."""
    return json.dumps({"error": message}, separators=(",", ":"), ensure_ascii=False).encode()


def _rechunk(pieces: bytes | Iterable[bytes], size: int) -> Iterator[bytes]:
    """Cut a snapshot into chunks of exactly `size` bytes (the last may be shorter),
    slicing large pieces in place rather than copying them into a buffer."""
    if isinstance(pieces, bytes):
        pieces = (pieces,)
    pending = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        if pending:  # top up the chunk left over from earlier pieces first
            take = size - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(view) >= size:
            yield view[:size].tobytes()
            view = view[size:]
        pending += view
    if pending:
        yield bytes(pending)


def _read_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(CHUNK_BYTES):
        yield chunk


class ModuleServicer(pb_grpc.ModuleServicer):
    """The `tinyraft.v1.Module` service around a `Module`. Add it to your own grpc.aio
    server with `pb_grpc.add_ModuleServicer_to_server`, or let `serve_module` do it."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.instance_id = str(uuid.uuid4())  # new per start, so the sidecar sees restarts
        self.applied_index = 0
        # Apply, Snapshot and Restore never interleave; Query and Info need no lock since
        # user code runs on the event loop thread and only Snapshot streams across awaits.
        self._lock = asyncio.Lock()

    async def Apply(self, request: Any, context: Any) -> pb.ApplyBatchResponse:
        async with self._lock:
            if request.after_index != self.applied_index:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the Module has applied up to index {self.applied_index}, "
                    f"not after_index {request.after_index}; Restore a snapshot and replay",
                )
            if request.last_index < request.after_index:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"last_index {request.last_index} is before after_index {request.after_index}",
                )
            if request.commands:  # the packed form (we say packed_apply in Info)
                if len(request.indexes) != len(request.commands):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{len(request.commands)} commands but {len(request.indexes)} indexes: "
                        "the packed form needs one index per command",
                    )
                packed = self._apply_each(zip(request.commands, request.indexes, strict=True))
                self.applied_index = request.last_index
                return pb.ApplyBatchResponse(packed_results=packed)
            results = self._apply_each((e.command, e.index) for e in request.entries)
            self.applied_index = request.last_index
            return pb.ApplyBatchResponse(results=[pb.ApplyResult(result=r) for r in results])

    async def ApplyStream(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ApplyBatchResponse]:
        """Apply, one answer per request on one stream (we say apply_stream in Info)."""
        async for request in requests:
            yield await self.Apply(request, context)

    def _apply_each(self, commands: Iterable[tuple[bytes, int]]) -> list[bytes]:
        apply = self.module.apply
        results = []
        for command, index in commands:
            try:
                out = apply(command, index)
                if not isinstance(out, bytes):
                    raise TypeError(f"apply returned {type(out).__name__}, not bytes")
            except Exception as exc:  # a bad command is a result, not a crash
                out = error_result(f"{type(exc).__name__}: {exc}")
            results.append(out)
        return results

    async def _check_min_index(self, min_index: int, context: Any) -> None:
        if self.applied_index < min_index:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the Module has applied index {self.applied_index}, the query needs "
                f"{min_index}: it restarted and must be restored first",
            )

    async def Query(self, request: Any, context: Any) -> pb.ModuleQueryResponse:
        await self._check_min_index(request.min_index, context)
        try:
            return pb.ModuleQueryResponse(answer=self.module.query(request.request))
        except Exception as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc) or type(exc).__name__)
            raise  # unreachable: abort raises

    async def QueryBatch(self, request: Any, context: Any) -> pb.ModuleQueryBatchResponse:
        await self._check_min_index(request.min_index, context)
        query = self.module.query
        errors: dict[int, str] = {}
        try:  # all questions in one pass, the usual case: no per-question bookkeeping
            answers = list(map(query, request.requests))
        except Exception:  # again one by one: a bad question gets its error, the rest answers
            answers = []
            for position, question in enumerate(request.requests):
                try:
                    answers.append(query(question))
                except Exception as exc:
                    errors[position] = str(exc) or type(exc).__name__
                    answers.append(b"")
        if request.packed:
            return pb.ModuleQueryBatchResponse(answers=answers, errors=errors)
        return pb.ModuleQueryBatchResponse(
            results=as_results(answers, errors, pb.ModuleQueryResult)
        )

    async def Snapshot(self, request: Any, context: Any) -> None:
        # context.write rather than an async generator: if the reader goes away, the
        # cancellation lands here and releases the lock at once.
        async with self._lock:
            index = self.applied_index
            try:
                chunks = _rechunk(self.module.snapshot(), CHUNK_BYTES)
                first = next(chunks, b"")  # an empty state still sends one chunk: the index
                await context.write(pb.ModuleSnapshotChunk(data=first, index=index))
                for chunk in chunks:
                    await context.write(pb.ModuleSnapshotChunk(data=chunk))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await context.abort(grpc.StatusCode.INTERNAL, f"module snapshot failed: {exc}")

    async def Restore(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> pb.RestoreResponse:
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES) as spool:
            index: int | None = None
            async for chunk in request_iterator:
                if index is None:
                    index = chunk.index
                spool.write(chunk.data)
            if index is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Restore got no chunks")
                raise AssertionError  # unreachable: abort raises
            async with self._lock:
                try:
                    self.module.restore_stream(_read_chunks(spool))
                except Exception as exc:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"module restore failed: {exc}"
                    )
                self.applied_index = index
        return pb.RestoreResponse()

    async def Info(self, request: Any, context: Any) -> pb.InfoResponse:
        return pb.InfoResponse(
            instance_id=self.instance_id,
            applied_index=self.applied_index,
            packed_apply=True,
            apply_stream=True,
        )


def _split_address(addr: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port); raise ListenError if malformed."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ListenError(f"{addr!r} is not HOST:PORT (e.g. 127.0.0.1:50061, [::1]:50061)")
    return host, int(port_text)


def _why_unbindable(host: str, port: int) -> str:
    # gRPC only says "Failed to bind"; ask the OS for the real reason.
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                return exc.strerror or str(exc)
    return "gRPC could not bind it"


async def serve_module(
    module: Module,
    addr: str,
    *,
    server_credentials: grpc.ServerCredentials | None = None,
    ready: Callable[[str], None] | None = None,
    grace: float = 5.0,
) -> None:
    """Serve `module` on `addr` (HOST:PORT; port 0 picks a free one) until cancelled.

    `ready(bound_address)` is called once serving, with the real port. Raises ListenError
    if the address is malformed or cannot be bound (for example, the port is taken).
    On cancellation, health turns NOT_SERVING and in-flight calls get `grace` seconds."""
    host, port = _split_address(addr)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be silently shared
        ]
    )
    # Typed alias: mypy refuses calls into the untyped generated stubs.
    add_module: Callable[[ModuleServicer, Any], None] = pb_grpc.add_ModuleServicer_to_server
    add_module(ModuleServicer(module), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if server_credentials is None:
            bound = server.add_insecure_port(addr)
        else:
            bound = server.add_secure_port(addr, server_credentials)
    except RuntimeError:
        raise ListenError(f"cannot listen on {addr}: {_why_unbindable(host, port)}") from None
    await server.start()
    try:
        for service in ("", _SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        if ready is not None:
            ready(f"{host}:{bound}")
        await server.wait_for_termination()
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace)


def run_module(
    module: Module,
    addr: str,
    *,
    server_credentials: grpc.ServerCredentials | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Blocking `serve_module` for scripts (call it from the main thread): serves until
    SIGINT or SIGTERM, then stops gracefully and returns. Raises ListenError like
    `serve_module`."""

    async def main() -> None:
        serving = asyncio.create_task(
            serve_module(module, addr, server_credentials=server_credentials, ready=ready)
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            if not serving.cancelled():
                raise

    event_loop.run(main())
