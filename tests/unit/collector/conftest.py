from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES_MORE = Path(__file__).resolve().parents[3].parent / "shared" / "samples-more"


@pytest.fixture(scope="session")
def more_dir() -> Path:
    """../shared/samples-more: third-party logs beside the repository, never copied into it."""
    if not SAMPLES_MORE.is_dir():
        pytest.skip(f"third-party log samples not present at {SAMPLES_MORE} (they live in ../shared, "
                    "outside the repository; CI has them)")
    return SAMPLES_MORE
