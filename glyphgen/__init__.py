"""glyphgen: diffusion models that write the text you give them into the image."""

from __future__ import annotations

__version__ = "0.1.0"

# The inference API, imported on first use so that `import glyphgen` stays light (no torch).
_LAZY = {
    "load_bundle": "glyphgen.inference.bundle",
    "Bundle": "glyphgen.inference.bundle",
    "Cascade": "glyphgen.inference.cascade",
    "export_bundle": "glyphgen.inference.export",
    "rerank": "glyphgen.inference.rerank",
    "RerankConfig": "glyphgen.inference.rerank",
    "SamplingOptions": "glyphgen.diffusion.options",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glyphgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
