"""A small Vision Transformer for 8x8 to 32x32 images.

Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale" (ICLR): the image is cut into non-overlapping
p x p patches, each linearly embedded (here a p x p conv with stride p, whose
weight reads as a dim x C p p matrix like any conv), a learned class token and
learned position embeddings are added, and pre-norm transformer blocks
(multi-head self-attention, then a two-layer GELU MLP, each with a residual
connection) follow. The final LayerNorm of the class token is the penultimate
embedding, the input of the classifier ``fc``.

The default (patch 4, dim 64, depth 4, 4 heads) is the size of the small ViTs
trained from scratch on CIFAR-10; every weight matrix is an ``nn.Linear`` /
``nn.Conv2d`` so that :func:`rankbias.rank_report` sees each of them as a layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankbias.errors import InvalidParameterError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise InvalidParameterError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D / heads)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, round(mlp_ratio * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, D)
        return x + self.mlp(self.ln2(x))  # (B, T, D)


class ViT(nn.Module):
    """``image_size`` must be a multiple of ``patch_size``; T = (image_size / patch_size)^2 + 1 tokens."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
                 num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise InvalidParameterError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if depth < 1 or dim < 1:
            raise InvalidParameterError(f"depth and dim must be >= 1, got {depth}, {dim}")
        self.image_size, self.patch_size = image_size, patch_size
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise InvalidParameterError(
                f"ViT built for {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}")
        B = x.shape[0]
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, D): one token per patch
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1) + self.pos_embed  # (B, T, D)
        t = self.blocks(t)  # (B, T, D)
        z = self.norm(t[:, 0])  # (B, D): the class token, the penultimate embedding
        return self.fc(z)  # (B, classes)
