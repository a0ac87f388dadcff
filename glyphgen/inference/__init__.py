"""Inference: bundles (export and load), sampling, the cascade and OCR rejection sampling.

from glyphgen.inference import Cascade, export_bundle, load_bundle, rerank
"""

from __future__ import annotations

from glyphgen.inference.bundle import Bundle, load_bundle
from glyphgen.inference.cascade import Cascade, check_cascade
from glyphgen.inference.export import export_bundle
from glyphgen.inference.format import BundleConfig
from glyphgen.inference.rerank import RerankConfig, RerankResult, prune, rerank

__all__ = [
    "Bundle",
    "BundleConfig",
    "Cascade",
    "RerankConfig",
    "RerankResult",
    "check_cascade",
    "export_bundle",
    "load_bundle",
    "prune",
    "rerank",
]
