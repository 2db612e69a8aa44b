"""The simulated node's platform: CUDA."""


class _Cuda:
    def is_cpu(self) -> bool:
        return False


current_platform = _Cuda()
