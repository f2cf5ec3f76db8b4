"""The `curate` command: parses options and calls one library function per command.

Each module below registers one family of commands on `app`; adding a family is adding its name to
FAMILIES, whose order is the order of `curate --help`. Stage packages are imported inside the commands
so `curate --help` stays fast.
"""

from __future__ import annotations

from importlib import import_module

from curate.cli.program import app, main

FAMILIES = (
    "sources",
    "faces",
    "tags",
    "embeddings",
    "pipeline",
    "training",
    "generation",
    "quality",
    "steering",
    "serving",
)

for _family in FAMILIES:
    import_module(f"curate.cli.{_family}")

__all__ = ["app", "main"]
