"""Chat templates and model families: what Magpie reads from a model's own template."""
