"""The sidecar's client of the user's Module (module.proto)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from tinyraft.answers import unpack
from tinyraft.v1 import module_pb2 as mpb
from tinyraft.v1 import module_pb2_grpc

APPLY_TIMEOUT_S = 30.0  # a Module slower than this is treated as hung: the call is retried


class ModuleOutOfSync(Exception):
    """The Module is not at the index the sidecar expected (it restarted)."""


class ModuleUnavailable(Exception):
    """The Module could not be reached or failed; the sidecar retries."""


class ModuleClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.stub = module_pb2_grpc.ModuleStub(self.channel)
        self._batch_queries = True  # until the Module answers QueryBatch UNIMPLEMENTED
        self.packed_apply = False  # what the Module's latest Info said
        self.apply_stream = False  # likewise
        self._stream: Any = None  # the open ApplyStream call, if any

    async def info(self, timeout: float = 2.0) -> mpb.InfoResponse:
        """The Module's state; also learns which Apply forms it takes (a restarted
        Module may be another version, so ask again after each restart)."""
        try:
            reply = await self.stub.Info(mpb.InfoRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise ModuleUnavailable(_describe(self.address, err)) from err
        self.packed_apply = reply.packed_apply
        self.apply_stream = reply.apply_stream
        self._drop_stream()  # it may lead to the process that was restarted
        return reply

    async def apply(
        self, after_index: int, indexes: list[int], commands: list[bytes], last_index: int
    ) -> list[bytes]:
        """Apply commands[i] at log index indexes[i]; one result per command."""
        packed = self.packed_apply
        if packed:
            request = mpb.ApplyBatchRequest(
                after_index=after_index, commands=commands, indexes=indexes, last_index=last_index
            )
        else:
            request = mpb.ApplyBatchRequest(
                after_index=after_index,
                entries=[
                    mpb.ModuleEntry(index=i, command=c)
                    for i, c in zip(indexes, commands, strict=True)
                ],
                last_index=last_index,
            )
        try:
            reply = await self._send_apply(request)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ModuleOutOfSync(err.details() or "") from err
            raise ModuleUnavailable(_describe(self.address, err)) from err
        except TimeoutError as err:
            raise ModuleUnavailable(
                f"the Module at {self.address} did not answer Apply within {APPLY_TIMEOUT_S:.0f} s"
            ) from err
        results = list(reply.packed_results) if packed else [r.result for r in reply.results]
        if len(results) != len(commands):
            raise ModuleUnavailable(
                f"the Module at {self.address} returned {len(results)} results for "
                f"{len(commands)} commands; it must return exactly one per command"
            )
        return results

    async def _send_apply(self, request: mpb.ApplyBatchRequest) -> mpb.ApplyBatchResponse:
        """One Apply round trip: on the Module's ApplyStream when it serves one (a
        stream message costs a third of a unary call), else unary. Fails like Apply."""
        if self.apply_stream:
            try:
                return await self._stream_apply(request)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self.apply_stream = False  # a Module that said it serves one, and does not
        return await self.stub.Apply(request, timeout=APPLY_TIMEOUT_S)

    async def _stream_apply(self, request: mpb.ApplyBatchRequest) -> mpb.ApplyBatchResponse:
        """One request and its answer on the open ApplyStream; any failure closes it."""
        if self._stream is None or self._stream.done():  # none yet, or the Module restarted
            self._stream = self.stub.ApplyStream()
        stream = self._stream

        async def round_trip() -> Any:
            await stream.write(request)  # may wait on flow control: inside the timeout
            return await stream.read()

        try:
            reply = await asyncio.wait_for(round_trip(), APPLY_TIMEOUT_S)
        except BaseException as err:
            self._drop_stream()
            if isinstance(err, asyncio.InvalidStateError):  # it ended just before the write
                raise ModuleUnavailable(
                    f"the Module at {self.address} ended its ApplyStream"
                ) from err
            raise
        if reply is grpc.aio.EOF:
            self._drop_stream()
            raise ModuleUnavailable(
                f"the Module at {self.address} ended its ApplyStream without an answer"
            )
        return reply

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    async def query(self, request: bytes, timeout: float, min_index: int) -> bytes:
        """Raises ModuleOutOfSync if the Module has applied less than min_index."""
        try:
            reply = await self.stub.Query(
                mpb.ModuleQueryRequest(request=request, min_index=min_index), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ModuleOutOfSync(err.details() or "") from err
            raise
        return bytes(reply.answer)

    async def query_batch(
        self, requests: list[bytes], timeout: float, min_index: int
    ) -> tuple[list[bytes], dict[int, str]]:
        """Answers, one per request, from one state, and the refused ones' reasons by
        position. Raises ModuleOutOfSync like query(); a Module without QueryBatch is
        asked each question with Query."""
        if self._batch_queries:
            try:
                reply = await self.stub.QueryBatch(
                    mpb.ModuleQueryBatchRequest(
                        requests=requests, min_index=min_index, packed=True
                    ),
                    timeout=timeout,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise ModuleOutOfSync(err.details() or "") from err
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._batch_queries = False
            else:
                answers, errors = unpack(reply)  # an older Module answers in the older form
                if len(answers) != len(requests):
                    raise ModuleUnavailable(
                        f"the Module at {self.address} returned {len(answers)} answers "
                        f"for {len(requests)} questions; it must return exactly one per question"
                    )
                return answers, errors
        pairs = await asyncio.gather(*(self._query_one(r, timeout, min_index) for r in requests))
        return [a for a, _ in pairs], {i: e for i, (_, e) in enumerate(pairs) if e}

    async def _query_one(self, request: bytes, timeout: float, min_index: int) -> tuple[bytes, str]:
        try:
            return await self.query(request, timeout, min_index), ""
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return b"", err.details() or "refused"

    async def snapshot(self) -> AsyncIterator[tuple[int, bytes]]:
        """(index of the state, chunk) pairs; the index comes with the first chunk."""
        try:
            async for chunk in self.stub.Snapshot(mpb.ModuleSnapshotRequest(), timeout=600.0):
                yield chunk.index, bytes(chunk.data)
        except grpc.aio.AioRpcError as err:
            raise ModuleUnavailable(_describe(self.address, err)) from err

    async def restore(self, index: int, chunks: Iterable[bytes]) -> None:
        async def stream() -> AsyncIterator[mpb.RestoreChunk]:
            first = True
            for data in chunks:
                yield mpb.RestoreChunk(data=data, index=index if first else 0)
                first = False
            if first:
                yield mpb.RestoreChunk(data=b"", index=index)

        try:
            await self.stub.Restore(stream(), timeout=600.0)
        except grpc.aio.AioRpcError as err:
            raise ModuleUnavailable(_describe(self.address, err)) from err

    async def close(self) -> None:
        self._drop_stream()
        await self.channel.close()


def _describe(address: str, err: grpc.aio.AioRpcError) -> str:
    return f"Module at {address}: {err.code().name}: {err.details()}"
