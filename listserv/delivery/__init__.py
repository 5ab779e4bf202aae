"""Outbound: the durable queue, fan-out, transport and the delivery runner."""
