"""Errors, atomic records and manifests, run safety (provenance, locks), interruption: the base layer."""
