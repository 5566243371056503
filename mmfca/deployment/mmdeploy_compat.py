"""mmdeploy 1.3.1 (OpenMMLab's deployment route) on the torch mmfca uses.

mmdeploy 1.3.1 predates torch 2.9 and needs two workarounds there, both
applied by :func:`mmdeploy_compat` for the duration of an export:

- It calls ``torch.onnx.export`` without ``dynamo``, which torch now takes
  to mean the torch.export-based exporter. mmdeploy's rewriters patch the
  TorchScript-based one (symbolic functions, ``_model_to_graph``), so the
  context passes ``dynamo=False``: without it a classifier export ran for
  31 minutes and the rewriters did not apply.
- Its ONNX Runtime RoIAlign symbolic (mmdet's two-stage detectors) imports
  ``torch.onnx.symbolic_opset9._cast_Long``, which torch has removed; the
  context provides it (a ``Cast`` to int64, what the removed function
  emitted).

mmdeploy itself installs with ``pip install --no-deps mmdeploy==1.3.1``
(it pins protobuf <= 3.20.2, which would downgrade onnx and protobuf) and
``pip install aenum grpcio multiprocess``. Its ``tools/deploy.py`` runs
each step in a spawned process, which the context does not reach: call
:func:`mmdeploy.apis.torch2onnx` in-process, as
``tests/test_deployment/test_deploy.py`` does.
"""
import contextlib
import functools
from typing import Iterator

import torch
import torch.onnx.symbolic_opset9 as opset9

from ..utils.versions import check_verified


def _cast_long(graph, value, non_blocking):
    """What ``torch.onnx.symbolic_opset9._cast_Long`` emitted: a Cast to
    int64 (``non_blocking`` has no ONNX meaning)."""
    return graph.op('Cast', value, to_i=torch.onnx.TensorProtoDataType.INT64)


@contextlib.contextmanager
def mmdeploy_compat() -> Iterator[None]:
    """Within the context, ``torch.onnx.export`` defaults to the
    TorchScript-based exporter (``dynamo=False``, unless a caller passes
    ``dynamo``) and ``torch.onnx.symbolic_opset9._cast_Long`` exists; both
    are undone on exit."""
    # mmdeploy's export and RoIAlign symbolic (private torch names).
    check_verified(
        'mmdeploy', 'torch.onnx.export without dynamo, '
        'symbolic_opset9._cast_Long')
    export = torch.onnx.export
    added_cast = not hasattr(opset9, '_cast_Long')

    @functools.wraps(export)
    def legacy_export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    torch.onnx.export = legacy_export
    if added_cast:
        opset9._cast_Long = _cast_long
    try:
        yield
    finally:
        torch.onnx.export = export
        if added_cast:
            del opset9._cast_Long
