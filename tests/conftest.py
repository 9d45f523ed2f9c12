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


@pytest.fixture(scope="module")
def experiment_corpus(tmp_path_factory):
    """A corpus of two short texts in the shipped tokenizer, for the experiment runner's tests."""
    from minigpt.training import Document, TokenCorpus, prepare
    from weights import SHAKESPEARE, load_tokenizer

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 30
    held = "The slings and arrows of outrageous fortune, or to take arms against a sea of troubles. " * 10
    out = tmp_path_factory.mktemp("corpus")
    prepare([Document("train", [text]), Document("held_out", [held])], load_tokenizer(SHAKESPEARE), out)
    return TokenCorpus.open(out)
