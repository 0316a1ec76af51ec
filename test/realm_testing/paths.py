"""Paths of the repository and of the recordings in ``test/data``."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = REPO_ROOT / 'test' / 'data'
EVT3_BAG = TEST_DATA / 'ecpy_test_events_1_evt3'
EVT3_RAW = TEST_DATA / 'ecpy_test_events_1.raw'
MONO_BAG = TEST_DATA / 'eccodecs_test_data_mono_cd'
