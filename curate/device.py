"""Choosing the torch device every model of curate runs on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.errors import InvalidArgument

if TYPE_CHECKING:
    import torch


def pick_device(device: str = "auto") -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise InvalidArgument(f"unknown device {device!r}: {exc}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return chosen
