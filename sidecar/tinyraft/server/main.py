"""`tinyraft sidecar`: one member as a process.

Start-up: read the config (exit 2 on bad input), open the data dir (refusing one of
another cluster or member), bring the Module to the latest snapshot, start the Raft
loop and the gRPC services, then bootstrap, join, or just run. SIGTERM: a leader
hands leadership over first; the process stops within SHUTDOWN_TIMEOUT_S. A
restart never changes membership."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tinyraft import event_loop
from tinyraft.core.types import Role
from tinyraft.server.config import SidecarConfig, main_config_or_exit
from tinyraft.server.member import Member
from tinyraft.server.metrics import Metrics
from tinyraft.server.services import AdminService, CallerService
from tinyraft.server.tls import server_credentials
from tinyraft.storage import DataDir, Recovered, StorageError
from tinyraft.transport.peers import GRPC_OPTIONS
from tinyraft.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    caller_pb2,
    caller_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)

log = logging.getLogger("tinyraft.sidecar")

READY_SERVICE = "tinyraft.ready"  # gRPC health service name for the readiness probe


def _open_data_dir(cfg: SidecarConfig, metrics: Metrics) -> tuple[DataDir, Recovered]:
    try:
        return DataDir.open(
            cfg.data_dir,
            "",
            cfg.node_id,
            on_fsync=metrics.fsync_duration.observe,
            on_bytes_written=metrics.bytes_written.inc,
        )
    except StorageError as err:
        print(f"tinyraft sidecar: {err}", file=sys.stderr)
        sys.exit(1)


async def _serve(cfg: SidecarConfig) -> int:
    metrics = Metrics()
    data_dir, recovered = _open_data_dir(cfg, metrics)
    member_id = data_dir.identity.member_id
    member = Member(cfg, member_id, data_dir, metrics, recovered)

    server = grpc.aio.server(options=GRPC_OPTIONS)
    health_servicer = health.aio.HealthServicer()
    peer_pb2_grpc.add_PeerServicer_to_server(member.transport.servicer(), server)
    caller_pb2_grpc.add_CallerServicer_to_server(CallerService(member), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(member), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [
        d.services_by_name[n].full_name
        for d, n in (
            (peer_pb2.DESCRIPTOR, "Peer"),
            (caller_pb2.DESCRIPTOR, "Caller"),
            (admin_pb2.DESCRIPTOR, "Admin"),
        )
    ]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    creds = server_credentials(cfg.tls)
    listen = str(cfg.listen)
    try:
        if creds is not None:
            server.add_secure_port(listen, creds)
        else:
            server.add_insecure_port(listen)
    except RuntimeError:
        print(
            f"tinyraft sidecar: NODE_LISTEN_ADDR (--listen): cannot listen on {listen} "
            "(in use, or not an address of this host)",
            file=sys.stderr,
        )
        return 2
    if cfg.metrics is not None:
        metrics.serve(str(cfg.metrics))

    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(READY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("member %s listening on %s (advertised as %s)", member_id, listen, cfg.advertise)
    try:
        await member.start()
    except RuntimeError as err:
        print(f"tinyraft sidecar: {err}", file=sys.stderr)
        await server.stop(0)
        return 1

    if not member.cluster_id and cfg.bootstrap:
        cluster_id = member.bootstrap()
        log.info("bootstrapped a new cluster %s", cluster_id)
    elif member.cluster_id and cfg.bootstrap:
        log.info(
            "RAFT_BOOTSTRAP ignored: this data dir already belongs to cluster %s", member.cluster_id
        )
    background = []
    if not member.cluster_id and cfg.join:
        from tinyraft.server.join import join_cluster

        background.append(asyncio.create_task(join_cluster(member, cfg)))
    background.append(asyncio.create_task(_readiness(member, health_servicer)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    try:
        await asyncio.wait_for(_graceful_stop(member, server, background), cfg.shutdown_timeout_s)
    except TimeoutError:
        log.warning("graceful stop took longer than %ss; exiting", cfg.shutdown_timeout_s)
    data_dir.close()
    return 0


async def _graceful_stop(
    member: Member, server: grpc.aio.Server, background: list[asyncio.Task[None]]
) -> None:
    core = member.core
    if core.role is Role.LEADER and len(core.config.voters) > 1:
        from tinyraft.server.services import _most_caught_up

        target = _most_caught_up(member)
        if target is not None:
            log.info("handing leadership to %s before stopping", target)
            try:
                core.transfer_leadership(target)
                member.kick()
                for _ in range(200):
                    if core.role is not Role.LEADER:
                        break
                    await asyncio.sleep(0.01)
            except Exception as err:
                log.warning("leadership transfer failed: %s", err)
    for task in background:
        task.cancel()
    await server.stop(1.0)
    await member.stop()


async def _readiness(member: Member, health_servicer: health.aio.HealthServicer) -> None:
    """SERVING only while this member is in a cluster with a known leader and its
    Module has caught up with what it knows to be committed."""
    serving = None
    while True:
        core = member.core
        ready = bool(
            member.cluster_id
            and core.leader is not None
            and member.applier.module_ready
            and member.applier.applied >= core.commit - 1000
        )
        if ready != serving:
            serving = ready
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await health_servicer.set(READY_SERVICE, status)
        await asyncio.sleep(0.1)


def main(argv: list[str]) -> int:
    cfg = main_config_or_exit(argv, os.environ)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return event_loop.run(_serve(cfg))
