"""gRPC credentials from the mounted certificate files (see server.config's TLS settings).

With TLS on, every connection is mutually authenticated against one CA: a client, or
a member, without a certificate from that CA is refused by every service."""

from __future__ import annotations

import grpc

from tinyraft.server.config import TlsConfig


def server_credentials(tls: TlsConfig | None) -> grpc.ServerCredentials | None:
    if tls is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.ca_file.read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(tls: TlsConfig | None) -> grpc.ChannelCredentials | None:
    if tls is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=tls.key_file.read_bytes(),
        certificate_chain=tls.cert_file.read_bytes(),
    )
