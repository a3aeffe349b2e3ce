"""Shared pytest set-up. Fixtures that start real parts live in tests/fixtures/, one module each."""

pytest_plugins = [
    "tests.fixtures.hub",
    "tests.fixtures.slapd",
    "tests.fixtures.azurite",
    "tests.fixtures.webhook",
    "tests.fixtures.kmock",
    "tests.fixtures.arm",
    "tests.fixtures.graph",
    "tests.fixtures.login",
    "tests.fixtures.syncworld",
]
