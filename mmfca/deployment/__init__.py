from .onnx import check_onnx, export_onnx, prepared

__all__ = ['export_onnx', 'check_onnx', 'prepared']
