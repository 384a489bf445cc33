"""Fixtures shared across the suite, and its order under pytest-xdist."""

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from fedguard.deploy.certs import FederationCerts


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under xdist the federation tests (marked deploy: ~3/4 of the time) go first, shared
    # out between the workers, and the short tests fill in around them: in collection
    # order one worker could be left running the last long ones alone. Stable: every
    # worker must collect the same order.
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("deploy") is None)


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
