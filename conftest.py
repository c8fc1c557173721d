"""Test-session plumbing: the local stand-ins are pytest plugins under tests/support/."""

pytest_plugins = [
    "tests.support.arm",
    "tests.support.azurite",
    "tests.support.postgres",
    "tests.support.estate",
    "tests.support.tally",
]
