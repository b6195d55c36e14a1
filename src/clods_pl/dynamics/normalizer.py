"""Online feature normalizer (running mean / std), as in deepmind-research ``meshgraphnets/normalization.py``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Normalizer(nn.Module):
    """Normalise features with running statistics accumulated over training batches.

    Statistics are buffers (saved in checkpoints). ``std = max(sqrt(E[x^2] - E[x]^2), std_epsilon)``.
    Accumulation stops after ``max_accumulations`` calls; the caller decides when to accumulate at all
    (the dynamics stage does so during its first ``normalizer_steps`` training steps only).

    Args:
        size: feature dimension D. max_accumulations: cap on accumulated batches. std_epsilon: std floor.
    """

    def __init__(self, size: int, max_accumulations: int = 1_000_000, std_epsilon: float = 1e-8) -> None:
        super().__init__()
        self.size = size
        self.max_accumulations = int(max_accumulations)
        self.std_epsilon = float(std_epsilon)
        self.register_buffer("acc_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_accumulations", torch.zeros((), dtype=torch.float64))
        self.register_buffer("acc_sum", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("acc_sum_squared", torch.zeros(size, dtype=torch.float64))

    @torch.no_grad()
    def accumulate(self, x: Tensor) -> None:
        """Add a batch ``x: (N, D)`` to the statistics (no-op once ``max_accumulations`` is reached)."""
        if self.num_accumulations.item() >= self.max_accumulations:
            return
        x = x.detach().reshape(-1, self.size).to(torch.float64)
        self.acc_sum += x.sum(dim=0)
        self.acc_sum_squared += (x * x).sum(dim=0)
        self.acc_count += x.shape[0]
        self.num_accumulations += 1

    def mean(self) -> Tensor:
        """(D,) running mean (zeros before any data)."""
        return self.acc_sum / self.acc_count.clamp(min=1.0)

    def std(self) -> Tensor:
        """(D,) running std with floor ``std_epsilon`` (ones before any data)."""
        c = self.acc_count.clamp(min=1.0)
        var = (self.acc_sum_squared / c - self.mean() ** 2).clamp(min=0.0)
        std = var.sqrt().clamp(min=self.std_epsilon)
        return torch.where(self.acc_count > 0, std, torch.ones_like(std))  # no host sync

    def forward(self, x: Tensor, accumulate: bool = False) -> Tensor:
        """Normalise ``x: (..., D)``; first add it to the statistics when ``accumulate``."""
        if accumulate:
            self.accumulate(x)
        return (x - self.mean().to(x.dtype)) / self.std().to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        """Undo :meth:`forward`: ``y * std + mean``."""
        return y * self.std().to(y.dtype) + self.mean().to(y.dtype)
