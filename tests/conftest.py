"""Every suite's fixtures live in tests/support (one harness); this loads them as a plugin."""

pytest_plugins = ["support.fixtures"]
