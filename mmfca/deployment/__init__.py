from .onnx import (check_onnx, export_onnx, prepared, reference_outputs,
                   time_onnx)
from .segmentor import (ExactAdaptiveAvgPool2d, SegmentorForward,
                        exact_adaptive_pooling, mmseg_inference)

__all__ = [
    'export_onnx', 'check_onnx', 'prepared', 'reference_outputs', 'time_onnx',
    'ExactAdaptiveAvgPool2d', 'SegmentorForward', 'exact_adaptive_pooling',
    'mmseg_inference'
]
