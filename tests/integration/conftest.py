"""Integration fixtures: ``sink``, ``harness`` (SMTP intake) and ``lmtp_harness``, ``quiet_harness``."""

from tests.integration.harness import harness, lmtp_harness, quiet_harness, sink  # noqa: F401
