import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two cores: keep each worker to one thread so xdist's two workers do not fight.
torch.set_num_threads(int(os.environ.get("MINIGPT_TEST_THREADS", "1")))

# The kernels minigpt.fast times (kernels.py) are cached here, not in the user's cache directory
os.environ.setdefault("MINIGPT_CACHE_DIR", tempfile.mkdtemp(prefix="minigpt-test-cache-"))

settings.register_profile(
    "minigpt",
    deadline=None,  # model construction times vary with machine load
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("minigpt")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def browser():
    """Headless chromium (Debian's, driven by Playwright) for the tests that open a view; skips, saying
    why, where either is missing."""
    from minigpt.views.browser import chromium, find_chromium

    if find_chromium() is None:
        pytest.skip("no browser: Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    with chromium() as launched:
        yield launched
