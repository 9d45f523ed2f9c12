"""Writing a file so that a failed or interrupted write never leaves half of it behind.

The new contents go to a temporary file beside the target, which then replaces it in one
`os.replace` (a rename: atomic on POSIX and Windows). A reader, or the next run, finds the old
file or the new one, never a mix, and a write that fails leaves the old file as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """write(temporary) fills a temporary file beside `path`, which then replaces `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        # safetensors creates its files with mode 0600; give ours the usual umask-based mode
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask
