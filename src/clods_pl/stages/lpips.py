"""LPIPS when it can run offline: the one place that looks for torchvision and its backbone weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

LPIPS_BACKBONE_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet, the backbone of LPIPS(net="alex")


def local_lpips(device: torch.device | str = "cpu") -> tuple[Any, str | None]:
    """torchmetrics' LPIPS (AlexNet) when torchvision and its backbone weights are installed locally, else None and
    a one-line notice naming the fix; never downloads (an offline node would hang)."""
    weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_WEIGHTS
    try:
        if importlib.util.find_spec("torchvision") is None:
            raise ModuleNotFoundError(f"it needs torchvision (`pip install torchvision`) and {weights}")
        if not weights.is_file():  # torchvision would try to download it (and hang on an offline machine)
            raise FileNotFoundError(f"{weights} missing; put torchvision's AlexNet weights there to get LPIPS")
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: PLC0415  (needs torchvision)

        return LearnedPerceptualImagePatchSimilarity(net_type="alex").to(device), None
    except Exception as exc:  # torchvision missing or weights not cached: never download here
        return None, f"[clods-pl] LPIPS skipped (PSNR and SSIM still reported): {str(exc).splitlines()[0][:200]}"
