from dataclasses import dataclass


class _EngineConfig:
    use_v2_model_runner = True  # a GPU build's default


@dataclass
class EngineArgs:
    model: str = ""
    tokenizer: str = ""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 0
    dtype: str = "auto"

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def create_engine_config(self):
        return _EngineConfig()
