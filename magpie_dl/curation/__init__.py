"""Curation's logic: tagging, language, embeddings, near-duplicates and the balanced selection."""
