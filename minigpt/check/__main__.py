"""python -m minigpt.check path/to/file.py:Name [--kind attend]

Loads Name from the file (the file runs, as an import would), checks it as that kind (without
--kind, as the kind its names say, kinds.py), prints the report; exit status 0 when every
property holds, 1 when one fails, 2 for a usage error."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from . import KINDS, check
from .kinds import infer_kind


def load(target: str) -> object:
    path, _, name = target.rpartition(":")
    if not path or not name:
        raise ValueError(f"name the piece as path/to/file.py:Name, got {target!r}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no such file: {file}")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.resolve().parent))  # the learner's file may import its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, name):
        found = [n for n in vars(module) if not n.startswith("_")]
        raise ValueError(f"{file} has no {name!r}; it defines {', '.join(found[:8]) or 'nothing'}")
    return getattr(module, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigpt.check", description=__doc__.split("\n\n")[1])
    parser.add_argument("target", help="path/to/file.py:Name")
    parser.add_argument("--kind", choices=KINDS, help="which contract the piece is written to (default: read off "
                        "its names)")
    args = parser.parse_args(argv)
    try:
        piece = load(args.target)
        kind = args.kind or infer_kind(piece)
        if kind is None:
            raise ValueError(f"cannot tell which kind of piece {args.target} is from its names: pass --kind, one of "
                             f"{', '.join(KINDS)}")
        report = check(piece, kind)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
