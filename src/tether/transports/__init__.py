"""Transports: how an encoded call reaches a service (HTTP, in-process, relay)."""
