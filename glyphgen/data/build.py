"""One entry point for every kind of shard build, shared by the CLI and the pipeline runner."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from glyphgen.config import load_config
from glyphgen.data.shards import BuildReport

# kind -> (module, config class, build function); imported on use, so one kind's heavy imports
# (the OCR engine) are not paid by another. The one list of kinds: a stage's `build_shards.kind` is
# checked against it.
BUILDERS = {
    "synthetic": ("glyphgen.data.synthetic", "SyntheticConfig", "build_synthetic_shards"),
    "real": ("glyphgen.data.real_wds", "RealConfig", "build_real"),  # images, a manifest or WebDataset tars
    "demo-real": ("glyphgen.data.demo", "DemoRealConfig", "build_demo_real_shards"),
}


def build(
    kind: str,
    files=(),
    overrides=(),
    values: dict[str, Any] | None = None,
    overwrite: bool = False,
    preview: Path | None = None,
) -> BuildReport:
    """Load the `kind` config (defaults <- files <- values <- overrides) and build its shards."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown shard kind {kind!r}; choose one of {', '.join(BUILDERS)}")
    module_name, schema_name, build_name = BUILDERS[kind]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, schema_name), files, overrides, values=values)
    return getattr(module, build_name)(cfg, overwrite=overwrite, preview=preview)
