"""Configuration: every setting declared once, the two recipes' configs, the command line and YAML layer."""
