"""RAFT_JOIN: an empty member asks an existing cluster to add it as a learner, learns
the cluster id from the answer, catches up, then asks to be promoted to voter.

The member accepts no Raft traffic until it knows its cluster id, so a member whose
volume was wiped cannot silently reappear as a voter that forgot its votes: the
cluster refuses to add a member id that is still a voter until it is removed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from tinyraft.server.config import SidecarConfig
from tinyraft.server.member import Member
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc, caller_pb2_grpc
from tinyraft.v1 import caller_pb2 as cpb

log = logging.getLogger("tinyraft.join")


def _leader_hint(err: grpc.aio.AioRpcError) -> str | None:
    for key, value in err.trailing_metadata() or ():
        if key == "tinyraft-leader":
            return str(value)
    return None


async def _call_leader(
    member: Member, targets: list[str], call: str, request: object, until: Callable[[], bool]
) -> object | None:
    """Call an Admin method on the leader, following leader hints; retries until it
    succeeds or `until()` says it is no longer needed (then None)."""
    delay = 0.1
    while not until():
        for address in list(targets):
            stub = admin_pb2_grpc.AdminStub(member.transport.channel(address))
            try:
                return await getattr(stub, call)(request, timeout=10.0)
            except grpc.aio.AioRpcError as err:
                hint = _leader_hint(err)
                if hint and hint not in targets:
                    targets.insert(0, hint)
                level = (
                    logging.WARNING
                    if err.code() == grpc.StatusCode.FAILED_PRECONDITION
                    else logging.INFO
                )
                log.log(level, "%s at %s: %s", call, address, err.details())
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return None


async def join_cluster(member: Member, cfg: SidecarConfig) -> None:
    targets = [str(a) for a in cfg.join]
    request = apb.AddLearnerRequest(member_id=member.id, address=str(cfg.advertise))
    # Stops early if this member was bootstrapped meanwhile (Admin Bootstrap).
    reply = await _call_leader(
        member, targets, "AddLearner", request, until=lambda: bool(member.cluster_id)
    )
    if not isinstance(reply, apb.MembershipResponse):
        return
    member.adopt_cluster(reply.cluster_id)
    log.info("joined cluster %s as a learner", reply.cluster_id)
    if cfg.auto_promote:
        await promote_when_caught_up(member, targets)


async def promote_when_caught_up(member: Member, targets: list[str]) -> None:
    while member.id not in member.core.config.voters:
        leader = member.leader_address()
        if leader is not None:
            stub = caller_pb2_grpc.CallerStub(member.transport.channel(leader))
            try:
                status = await stub.Status(cpb.StatusRequest(), timeout=5.0)
            except grpc.aio.AioRpcError:
                status = None
            if status is not None and member.applier.applied >= status.commit_index:
                await _call_leader(
                    member,
                    [leader, *targets],
                    "Promote",
                    apb.MemberRequest(member_id=member.id),
                    until=lambda: member.id in member.core.config.voters,
                )
                log.info("promoted to voter")
                return
        await asyncio.sleep(0.2)
