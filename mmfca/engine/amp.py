"""Mixed precision that also trains on machines without a GPU."""
from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


def accelerator_available() -> bool:
    """Whether mmengine's AmpOptimWrapper can run here."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPERS.register_module()
class AnyDeviceAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's :class:`AmpOptimWrapper` where an accelerator exists;
    bfloat16 autocast without loss scaling on a CPU-only machine.

    mmengine's wrapper asserts a GPU (or NPU/MLU/MUSA), so AMP configs
    cannot even be built on a CPU. On a CPU this wrapper trains in
    ``torch.autocast('cpu', dtype=torch.bfloat16)`` (float16 has no useful
    CPU kernels, and bfloat16 needs no loss scaling); on an accelerator it
    is exactly AmpOptimWrapper.

    Args:
        loss_scale (str | float | dict): As AmpOptimWrapper (unused on CPU).
        dtype (str | torch.dtype, optional): As AmpOptimWrapper; on CPU only
            ``bfloat16`` (the default there) is accepted.
        cpu_autocast (bool): Autocast on a CPU-only machine. False trains in
            float32 there, for models with CPU ops that lack bfloat16
            kernels (mmcv's NMS and RoIAlign: the detectors). Defaults to
            True.
        **kwargs: As :class:`~mmengine.optim.OptimWrapper`.
    """

    def __init__(self,
                 loss_scale='dynamic',
                 dtype=None,
                 cpu_autocast: bool = True,
                 **kwargs):
        self.on_cpu = not accelerator_available()
        self.cpu_autocast = cpu_autocast
        if not self.on_cpu:
            super().__init__(loss_scale=loss_scale, dtype=dtype, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                f'AMP on CPU trains in bfloat16; dtype={dtype!r} is not '
                f'supported there. Remove dtype from optim_wrapper.')
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = torch.bfloat16
        self.loss_scaler = None
        if cpu_autocast:
            print_log(
                'No GPU: AMP runs as bfloat16 autocast on the CPU, without '
                'loss scaling.', logger='current')
        else:
            print_log(
                'No GPU: training in float32 (cpu_autocast=False: this '
                'model has CPU ops without bfloat16 kernels).',
                logger='current')

    def backward(self, loss: torch.Tensor, **kwargs):
        if self.on_cpu:
            return OptimWrapper.backward(self, loss, **kwargs)
        return super().backward(loss, **kwargs)

    def step(self, **kwargs):
        if self.on_cpu:
            return OptimWrapper.step(self, **kwargs)
        return super().step(**kwargs)

    def state_dict(self) -> dict:
        if self.on_cpu:
            return OptimWrapper.state_dict(self)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict):
        if self.on_cpu:
            # A checkpoint from a GPU run carries the loss scaler's state.
            state_dict = dict(state_dict)
            state_dict.pop('loss_scaler', None)
            return OptimWrapper.load_state_dict(self, state_dict)
        return super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: nn.Module):
        if not self.on_cpu:
            with super().optim_context(model):
                yield
            return
        with OptimWrapper.optim_context(self, model), torch.autocast(
                'cpu', dtype=torch.bfloat16, enabled=self.cpu_autocast):
            yield
