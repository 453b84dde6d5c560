"""Fixtures for the serving tests: tiny bundles built once per session (see serve_helpers)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serve_helpers import make_energy_bundle, make_ensemble_bundle, make_gru_bundle, make_lookahead_bundle  # noqa: E402


@pytest.fixture(scope="session")
def gru_bundle(tmp_path_factory) -> Path:
    return make_gru_bundle(tmp_path_factory.mktemp("gru_bundle"))


@pytest.fixture(scope="session")
def energy_bundle(tmp_path_factory) -> Path:
    return make_energy_bundle(tmp_path_factory.mktemp("energy_bundle"))


@pytest.fixture(scope="session")
def lookahead_bundle(tmp_path_factory) -> Path:
    return make_lookahead_bundle(tmp_path_factory.mktemp("lookahead_bundle"))


@pytest.fixture(scope="session")
def ensemble_bundle(tmp_path_factory) -> Path:
    return make_ensemble_bundle(tmp_path_factory.mktemp("ensemble_bundle"))
