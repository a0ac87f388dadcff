"""Runs every row of the bad-input corpus (tests/bad_input.py) through the real CLI."""

from __future__ import annotations

import warnings

import pytest
from bad_input import Case
from bad_input_bundles import CASES as BUNDLE_CASES
from bad_input_loader import CASES as LOADER_CASES
from bad_input_real import CASES as REAL_CASES
from bad_input_sample import CASES as SAMPLE_CASES
from bad_input_shards import CASES as SHARD_CASES
from bundle_fixtures import trained_checkpoints
from conftest import one_line_error

from glyphgen.cli import main

CASES: list[Case] = SHARD_CASES + LOADER_CASES + REAL_CASES + BUNDLE_CASES + SAMPLE_CASES


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from glyphgen.inference import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {
        name: export_bundle(path, root / name) for name, path in trained_checkpoints(tmp_path_factory).items()
    }


def test_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    argv = case.setup(tmp_path, request.getfixturevalue("bundles")) if case.bundles else case.setup(tmp_path)
    argv = [str(a) for a in argv]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    err = capsys.readouterr().err
    if case.expect == "error":
        one_line_error(code, err, *case.fragments)
    else:
        assert case.expect == "skip", case.expect
        assert code == 0, err
        said = err + "\n".join(str(w.message) for w in caught)
        for fragment in case.fragments:
            assert fragment in said, said
    if case.check is not None:
        case.check(tmp_path)
