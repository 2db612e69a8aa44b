import enum

from vllm import SamplingParams  # noqa: F401


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class StructuredOutputsParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
