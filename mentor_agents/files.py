"""Writes that a kill never leaves half-done: whole files and directories go to a temporary sibling first, then one
rename; log lines are appended and fsynced."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (fsynced), so readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_lines(path: Path, lines: list[str]) -> None:
    """Append ``lines`` (each ending in a newline) to the log ``path``, fsynced before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def save_dir_atomically(out: Path, save: Callable[[Path], None]) -> None:
    """Let ``save`` write a directory into a sibling temp dir, then move it to ``out`` (`replace_dir`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save(staging)
        replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is first renamed to ``.<name>.old-<pid>`` and removed
    only afterwards. A failed second rename puts it back; a kill between the renames leaves it for `recover_dir`."""
    recover_dir(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: str | os.PathLike[str]) -> None:
    """Undo a `replace_dir` killed between its two renames: a missing ``target`` gets back its swapped-out
    ``.<name>.old-<pid>`` copy (the newest, if several); leftover copies beside a present ``target`` are removed.
    Readers of directories written by `replace_dir` call this before opening them."""
    target = Path(target)
    olds = sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
