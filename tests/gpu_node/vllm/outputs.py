from vllm import CompletionOutput, RequestOutput  # noqa: F401
