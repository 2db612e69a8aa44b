"""magpie_dl: Magpie preference data from an aligned model, as a distilabel pipeline."""

import warnings

__version__ = "0.1.0"

# distilabel 1.5.3 declares `Optional[RuntimeParameter[...]] = Field(default=None)`, which
# current pydantic warns about on every import; it is harmless and not ours to fix.
warnings.filterwarnings("ignore", message="The 'default' attribute with value None was provided")
