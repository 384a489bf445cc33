"""Fixtures shared across the suite."""

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from fedguard.deploy.certs import FederationCerts


@pytest.fixture
def tls_server() -> Iterator[Callable[[FederationCerts], int]]:
    """Start a real gRPC server (health service) on loopback with a federation's server
    certificate; returns its port. Every server started is stopped at teardown."""
    servers: list[grpc.Server] = []

    def serve(fed: FederationCerts) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        creds = grpc.ssl_server_credentials(
            [(fed.server_key.read_bytes(), fed.server_cert.read_bytes())]
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        servers.append(server)
        return port

    try:
        yield serve
    finally:
        for server in servers:
            server.stop(None)
