"""Reusable distilabel steps for Magpie preference data."""
