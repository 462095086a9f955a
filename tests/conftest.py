"""Shared pytest configuration: real servers are started by fixture plugins."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.postgres",
    "tests.fixtures.nats",
    "tests.fixtures.relay",
]
