"""The CPU fast paths and their one switch: with the switch off the plain
torch path runs everywhere, and it gives what the fast paths give."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from mmfca.models import FcaFormer
from mmfca.models.layers import fast_paths_enabled, use_fast_paths
from mmfca.testing.autograd import autograd_node_names

FUSED = 'mkldnn::_linear_pointwise'
FAST_BACKWARDS = ('GeluLinearBackward', 'LearnedBiasAttentionBackward')


def called_ops(fn):
    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.fixture(scope='module')
def l1():
    """A dense L1 whose 96x96 input pads its stage-3/4 maps to windows,
    with batch statistics and layer scales that make every part count."""
    torch.manual_seed(0)
    model = FcaFormer(
        'l1', out_indices=(0, 1, 2, 3), layer_scale_init_value=0.5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.)
    return model


def test_training_with_the_switch_off_runs_the_plain_path_alike(l1):
    image = torch.randn(2, 3, 96, 96)
    results = {}
    for enabled in (True, False):
        model = copy.deepcopy(l1).train()
        torch.manual_seed(1)
        with use_fast_paths(enabled):
            assert fast_paths_enabled() is enabled
            outs = model(image)
            loss = sum((out * out).mean() for out in outs)
            names = autograd_node_names(loss)
            loss.backward()
        results[enabled] = (loss.detach(), {
            name: param.grad
            for name, param in model.named_parameters()
        })
        present = [name for name in FAST_BACKWARDS if name in names]
        assert present == (list(FAST_BACKWARDS) if enabled else []), present
    assert fast_paths_enabled()
    (fast_loss, fast_grads), (plain_loss, plain_grads) = results.values()
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(
            fast_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_deploy_mode_with_the_switch_off_calls_no_onednn_linear(l1):
    model = copy.deepcopy(l1).eval()
    deployed = copy.deepcopy(l1).switch_to_deploy()
    image = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = model(image)
        assert FUSED in called_ops(lambda: deployed(image))
        with use_fast_paths(False):
            assert FUSED not in called_ops(lambda: deployed(image))
            plain = deployed(image)
        fast = deployed(image)
    for want, got_plain, got_fast in zip(expected, plain, fast):
        torch.testing.assert_close(got_plain, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_fast, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_environment_variable_turns_the_fast_paths_off_at_import():
    script = ('from mmfca.models.layers import fast_paths_enabled; '
              'print(fast_paths_enabled())')
    for value, expected in (('0', 'False'), ('1', 'True')):
        result = subprocess.run([sys.executable, '-c', script],
                                env=dict(os.environ, MMFCA_FAST_PATHS=value),
                                capture_output=True,
                                text=True)
        assert result.stdout.strip() == expected, result.stderr
