"""Root fixtures only. The claims fixtures (pairs, measurements) live in the drope_check pytest
plugin (drope_check/pytest_plugin/hooks.py), so an installed drope_check serves any checkout."""

import os

from hypothesis import HealthCheck, settings

# Deterministic property tests in CI (a red CI must be reproducible); exploratory locally.
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
