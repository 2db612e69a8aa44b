"""Reward scoring: ArmoRM semantics, batch-invariant, and ArmoRM itself implemented here."""
