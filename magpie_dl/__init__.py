"""magpie_dl: Magpie preference data from an aligned model, as a distilabel pipeline."""

__version__ = "0.1.0"
