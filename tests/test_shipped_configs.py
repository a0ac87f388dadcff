"""Every config shipped in configs/ and pipelines/ loads and validates (typos fail here, not on a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glyphgen.config import load_config
from glyphgen.data.build import BUILDERS
from glyphgen.training.core import build_model_config
from glyphgen.training.pipeline import load_pipeline, resolve_stage

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_and_its_stages_load(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    pipeline = load_pipeline(path)
    for stage in pipeline.stages:
        cfg = resolve_stage(pipeline, stage)
        model = build_model_config(cfg)
        assert cfg.stage == stage.name
        assert cfg.data.resolution == model.resolution  # filled in by the stage, never set apart
        assert (cfg.init_from is None) == (stage.init_from is None)
        if cfg.build_shards.config:
            import importlib

            module, schema, _ = BUILDERS[cfg.build_shards.kind]
            # The runner builds into data.shards at the model's resolution: the rest must validate.
            values = {"out": cfg.data.shards, "resolution": model.resolution}
            shards = load_config(
                getattr(importlib.import_module(module), schema),
                [cfg.build_shards.config],
                cfg.build_shards.overrides,
                values=values,
            )
            assert shards.resolution == model.resolution


def test_tiny_pipeline_is_the_default():
    assert "PIPELINE ?= pipelines/tiny.yaml" in (ROOT / "Makefile").read_text()
