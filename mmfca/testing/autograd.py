"""What an autograd graph holds, for tests of the training fast paths."""
from typing import List

import torch


def autograd_node_names(output: torch.Tensor) -> List[str]:
    """The class names of the autograd graph's nodes behind ``output``."""
    seen, stack, names = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names
