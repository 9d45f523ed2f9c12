"""Finding a GPT-2 checkpoint on disk: a directory, the Hugging Face cache, or a download.

Hub cache layout (huggingface_hub): <cache>/models--<org>--<name>/refs/main holds a commit hash,
and <cache>/models--<org>--<name>/snapshots/<hash>/ holds the files.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import threading
from pathlib import Path

from .safetensors_io import SHARD_INDEX, SINGLE_FILE

# The hub moved the original checkpoints under organisations; a cache may hold either name.
ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
COMMIT = re.compile(r"[0-9a-fA-F]{6,64}")
HUB_HOST = "huggingface.co"
WANTED_FILES = ["config.json", SINGLE_FILE, "model-*.safetensors", SHARD_INDEX, "vocab.json", "merges.txt"]


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def locate(source: str | os.PathLike) -> Path:
    """A directory holding config.json and the weights, for a path or a hub name.

    A path is what names a place on this machine: a PathLike, an absolute path, one that starts
    with ./ ../ or ~, or one whose first part is a local directory (weights/shakspeare). A bare
    name (gpt2) or owner/name whose owner is no local directory is a hub name. A path that does not
    exist is reported as such, with the nearest name that does; never looked up on the hub."""
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ValueError(f"weights must be a checkpoint directory or a hub name such as 'gpt2', got {source!r}")
    path = home_expanded(Path(source), "weights path")
    if path.is_dir():
        return path
    name = str(source)
    if path.exists() or _is_path(source) or not HUB_NAME.fullmatch(name):
        kind = "is not a directory" if path.exists() else "does not exist" + _did_you_mean(path)
        raise ValueError(f"weights path {path} {kind}; give a checkpoint directory or a hub name such as 'gpt2'")
    return find_cached(name) or _download(_names_of(name)[-1], hub_cache_dir())


def home_expanded(path: Path, what: str) -> Path:
    """~ and ~user expanded; a user with no home directory is named, not a RuntimeError from pathlib."""
    try:
        return path.expanduser()
    except RuntimeError:
        raise ValueError(f"{what} {path} does not exist: {path.parts[0]} names no home directory on this machine") from None


def _is_path(source: str | os.PathLike) -> bool:
    text = str(source)
    if isinstance(source, os.PathLike) or text.startswith(("/", "./", "../", "~", ".\\")) or text.endswith("/"):
        return True
    first = Path(text).parts[0]
    return len(Path(text).parts) > 1 and Path(first).is_dir()


def _did_you_mean(path: Path) -> str:
    """'; did you mean weights/shakespeare?' when a near name exists where the path goes astray."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or existing == path:
        return ""
    missing = path.relative_to(existing).parts[0] if existing != Path(".") else path.parts[0]
    names = [child.name for child in existing.iterdir() if child.is_dir()]
    close = difflib.get_close_matches(missing, names, n=1, cutoff=0.75)
    return f" (did you mean {existing / close[0]}?)" if close else ""


def checkpoint_root(directory: Path) -> Path:
    """The folder a checkpoint's files must lie in: the directory itself, or for a snapshot in the
    hub cache the model's cache folder, whose snapshots link to files in its `blobs/`."""
    snapshots = directory.resolve().parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--"):
        return snapshots.parent
    return directory


def find_cached(name: str) -> Path | None:
    """The cached snapshot of a hub name (under either of its names), or None; never downloads."""
    cache = hub_cache_dir()
    return next((found for n in _names_of(name) if (found := _cached_snapshot(cache, n)) is not None), None)


def _names_of(name: str) -> list[str]:
    """The name as given and its alias, short name first (the order the cache is searched)."""
    short = {long: short for short, long in ALIASES.items()}.get(name, name)
    return list(dict.fromkeys([short, ALIASES.get(short, name)]))


def _cached_snapshot(cache: Path, repo: str) -> Path | None:
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8", errors="replace").strip()
        if not COMMIT.fullmatch(commit):  # a hash names one folder in snapshots/, never a path
            raise ValueError(f"{ref} holds {commit[:60]!r}, which is not a commit hash; refusing to follow it")
        snapshot = repo_dir / "snapshots" / commit
        if _complete(snapshot):
            return snapshot
    snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((s for s in snapshots if _complete(s)), None)


def _complete(directory: Path) -> bool:
    has_weights = (directory / SINGLE_FILE).is_file() or (directory / SHARD_INDEX).is_file()
    return (directory / "config.json").is_file() and has_weights


def _download(repo: str, cache: Path) -> Path:
    how = (
        f"Download it on a machine with network access (`hf download {repo}`) and copy the cache folder "
        f"models--{repo.replace('/', '--')} into {cache}, or pass a directory holding config.json and "
        f"{SINGLE_FILE}."
    )
    where = f"looked in the Hugging Face cache {cache} for {' and '.join(_names_of(repo))}"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise ValueError(f"checkpoint {repo!r} is not cached and HF_HUB_OFFLINE is set; {where}. {how}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"checkpoint {repo!r} is not cached and huggingface_hub is not installed; {where}. {how}") from None
    if not _reachable(HUB_HOST, timeout=0.8):
        raise ValueError(f"checkpoint {repo!r} is not cached and {HUB_HOST} cannot be reached; {where}. {how}")
    return Path(snapshot_download(repo, allow_patterns=WANTED_FILES, cache_dir=cache))


def _reachable(host: str, timeout: float) -> bool:
    """Can we open a TCP connection to host:443 within `timeout` seconds? Name lookup has no
    timeout of its own, so the attempt runs in a thread that we stop waiting for."""
    result = []

    def attempt() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
