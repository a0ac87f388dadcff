"""Inference: bundles (export and load), sampling, the cascade and OCR rejection sampling (DESIGN 5).

from glyphgen.inference import export_bundle, load_bundle, rerank
"""

from __future__ import annotations

from glyphgen.inference.bundle import Bundle, load_bundle
from glyphgen.inference.export import export_bundle
from glyphgen.inference.format import BundleConfig
from glyphgen.inference.rerank import RerankConfig, RerankResult, prune, rerank
from glyphgen.inference.sample import cascade

__all__ = [
    "Bundle",
    "BundleConfig",
    "RerankConfig",
    "RerankResult",
    "cascade",
    "export_bundle",
    "load_bundle",
    "prune",
    "rerank",
]
