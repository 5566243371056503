"""Mixed precision that also trains on machines without a GPU."""
import logging
from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast

from ...utils.versions import check_verified


def accelerator_available() -> bool:
    """Whether mmengine's AmpOptimWrapper can run here."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware.

    oneDNN must have bfloat16 kernels for it
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, the check torch's
    own tests and inductor use: False on AVX2-only CPUs, where every
    bfloat16 operation is emulated, 8x slower than float32). On x86, oneDNN
    also accepts plain AVX-512, where it converts in software; native
    bfloat16 there needs AVX512-BF16 or AMX-BF16
    (:func:`torch.cpu.get_capabilities`). On Arm, oneDNN's check is the
    CPU's own bfloat16 extension.
    """
    # A private torch op (verified with torch 2.14), as torch's tests use.
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    capabilities = torch.cpu.get_capabilities()
    if 'avx512_bf16' in capabilities:  # an x86 CPU
        return bool(capabilities['avx512_bf16']
                    or capabilities.get('amx_bf16'))
    return True


@OPTIM_WRAPPERS.register_module()
class AnyDeviceAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's :class:`AmpOptimWrapper` where an accelerator exists;
    bfloat16 autocast without loss scaling on a CPU-only machine whose CPU
    computes bfloat16, float32 on other CPUs.

    mmengine's wrapper asserts a GPU (or NPU/MLU/MUSA), so AMP configs
    cannot even be built on a CPU. On a CPU this wrapper trains in
    bfloat16 autocast (mmengine's :func:`~mmengine.runner.amp.autocast` on
    the CPU, which is :func:`torch.autocast` there; float16 has no useful
    CPU kernels, and bfloat16 needs no loss scaling) where the CPU has
    bfloat16 arithmetic (:func:`cpu_computes_bfloat16`: AVX512-BF16, AMX,
    Arm BF16). Elsewhere bfloat16 is emulated, several times slower than
    float32, so it trains in float32 and logs why. On an accelerator it is
    exactly AmpOptimWrapper.

    Args:
        loss_scale (str | float | dict): As AmpOptimWrapper (unused on CPU).
        dtype (str | torch.dtype, optional): As AmpOptimWrapper; on CPU only
            ``bfloat16`` (the default there) is accepted.
        cpu_autocast (bool | str): Autocast on a CPU-only machine.
            ``'auto'``: where the CPU computes bfloat16, float32 elsewhere.
            True: always, also where bfloat16 is emulated (to reproduce a
            bfloat16 run on any CPU, at the emulation's cost). False:
            never, for models with CPU ops that lack bfloat16 kernels
            (mmcv's NMS and RoIAlign: the detectors). Defaults to 'auto'.
        **kwargs: As :class:`~mmengine.optim.OptimWrapper`.
    """

    def __init__(self,
                 loss_scale='dynamic',
                 dtype=None,
                 cpu_autocast: Union[bool, str] = 'auto',
                 **kwargs):
        # On a CPU, sets AmpOptimWrapper's attributes without its __init__.
        check_verified('mmengine',
                       'AmpOptimWrapper attributes set without its __init__')
        if cpu_autocast not in (True, False, 'auto'):
            raise ValueError(
                f"cpu_autocast must be 'auto', True or False, got "
                f'{cpu_autocast!r}.')
        self.on_cpu = not accelerator_available()
        if not self.on_cpu:
            self.cpu_autocast = False
            super().__init__(loss_scale=loss_scale, dtype=dtype, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                f'AMP on CPU trains in bfloat16; dtype={dtype!r} is not '
                f'supported there. Remove dtype from optim_wrapper.')
        # AmpOptimWrapper.__init__ asserts a GPU: skipped, and the two
        # attributes it sets are set here (verified with mmengine 0.10.7).
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = torch.bfloat16
        self.loss_scaler = None
        if cpu_autocast == 'auto':
            self.cpu_autocast = cpu_computes_bfloat16()
        else:
            self.cpu_autocast = cpu_autocast
        if self.cpu_autocast:
            print_log(
                'No GPU: AMP runs as bfloat16 autocast on the CPU, without '
                'loss scaling.',
                logger='current')
        elif cpu_autocast == 'auto':
            print_log(
                'No GPU, and this CPU has no bfloat16 arithmetic (neither '
                'AVX512-BF16 nor AMX nor Arm BF16), so bfloat16 would be '
                'emulated, several times slower than float32: training in '
                'float32 instead of AMP. optim_wrapper.cpu_autocast=True '
                'forces bfloat16 autocast.',
                logger='current',
                level=logging.WARNING)
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
        with OptimWrapper.optim_context(self, model), autocast(
                device_type='cpu', dtype=torch.bfloat16,
                enabled=self.cpu_autocast):
            yield
