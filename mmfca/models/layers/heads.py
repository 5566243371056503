"""What comes after the stages, and before them in the plain model: the
widened dense outputs and DeiT's class token."""
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from .windows import map_to_grid


class OutputProjection(nn.Module):
    """1x1 conv (no bias) + channels-first LayerNorm that widens a stage
    output, as in the official segmentation and detection backbones.

    Args:
        in_channels (int): Stage channels.
        out_channels (int): Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = LayerNorm2d(out_channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def add_class_token(patches: torch.Tensor, cls_token: torch.Tensor,
                    pos_embed: torch.Tensor) -> torch.Tensor:
    """A plain model's input tokens: the class token before the patch
    tokens, plus the position embedding (as DeiT).

    Args:
        patches (torch.Tensor): Patch embeddings ``(B, C, H, W)``.
        cls_token (torch.Tensor): ``(1, 1, C)``.
        pos_embed (torch.Tensor): ``(1, 1 + H * W, C)``.
    """
    tokens = map_to_grid(patches)
    cls_tokens = cls_token.expand(tokens.shape[0], -1, -1)
    return torch.cat((cls_tokens, tokens), dim=1) + pos_embed
