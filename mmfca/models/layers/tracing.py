"""Whether a forward is being run or recorded (traced, exported,
compiled): the layers keep plain torch calls and size-independent index
arithmetic in recorded graphs."""
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
