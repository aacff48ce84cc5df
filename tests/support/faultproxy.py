"""Kept for `from tests.support.faultproxy import FaultProxy` lines not yet switched: the proxy
lives in scripts/testkit/faultproxy.py, which the soak imports too (scripts never import tests)."""
from scripts.testkit.faultproxy import FaultProxy  # noqa: F401
