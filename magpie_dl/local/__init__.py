"""Local models for offline runs: the tiny models built here and SmolLM2 from its wheel."""
