"""The policy pack's entry point: `pulumi preview --policy-pack infra/policy` starts it.

PolicyPack() serves the Analyzer over gRPC on a loopback port and prints the port; the policies
themselves live in policies.py (tests call them directly, tests/infra/test_policy.py).
"""

from policies import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(name="htp-fleet-invariants", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
