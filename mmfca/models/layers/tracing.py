"""Whether a forward is being run or recorded (traced, exported,
compiled): the layers keep plain torch calls and size-independent index
arithmetic in recorded graphs, except where an export records one fixed
size."""
import torch
import torch.fx


def symbolic_shapes() -> bool:
    """Whether the forward is being recorded for a graph that must serve
    other sizes: an ONNX export (the legacy exporter traces), torch.export,
    or ``torch.fx`` symbolic tracing. Branching on feature-map sizes there
    would bake in the recorded size or fail on symbolic values. A plain
    ``torch.jit.trace`` (MAC counters) records the path of its input's
    size, as it records any control flow."""
    # A private torch function (verified with torch 2.14); torch's own
    # modules ask it the same question.
    return (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing())


def records_graph() -> bool:
    """Whether the forward is being recorded rather than run: export, FX,
    ``torch.jit.trace`` or ``torch.compile``. Recorded graphs get plain
    torch calls, which their tools know."""
    return symbolic_shapes() or torch.jit.is_tracing() or \
        torch.compiler.is_compiling()


def onnx_dynamo_export() -> bool:
    """Whether the torch.export-based ONNX exporter
    (``torch.onnx.export(..., dynamo=True)``) is recording the forward, so
    that ``torch.onnx.ops`` calls become ONNX nodes. The TorchScript-based
    exporter (``dynamo=False``) traces without torch.export; a plain
    torch.export (for other runtimes) is not an ONNX export."""
    return torch.onnx.is_in_onnx_export() and torch.compiler.is_exporting()


def fixed_size_export(*sizes) -> bool:
    """Whether torch.export (the dynamo ONNX exporter among others) records
    the forward with ``sizes`` as plain ints: the graph then serves these
    sizes only, so branching on them records the branch this size takes
    (symbolic sizes, from ``torch.export.Dim``, are ``torch.SymInt``).

    Args:
        *sizes: Sizes the forward branches on (e.g. a map's padding).
    """
    return torch.compiler.is_exporting() and all(
        isinstance(size, int) for size in sizes)
