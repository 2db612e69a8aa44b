"""The recipes: ``python pipelines/NAME.py`` or the console scripts ``magpie-dl-dpo`` / ``magpie-dl-instructions``."""
