"""Paths a run folder names stay inside it, and nothing is written through a link out of it.

A run folder is shared (copied, downloaded, renamed), so what its records say is data to check,
not a place to trust: a recorded model path, a `stages/` folder or a `report.md` that is a symlink
out of the folder would otherwise make a run read, link, upload or overwrite files elsewhere.
Every check here runs before the run writes anything.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tops.errors import UserError, quote
from tops.layout import TOP_LEVEL

# Names a run writes at the top of its folder (tops.layout), checked for links out before a run.
_TOP = TOP_LEVEL  # tops.layout: every top-level name a run writes


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def inside(run_dir: str | Path, recorded: str | Path, field: str, *, also: tuple[Path, ...] = ()) -> Path:
    """`recorded` (relative: to the run folder) resolved, links followed; a UserError naming `field`
    unless it lies inside the run folder (or one of `also`, e.g. the models root)."""
    run_dir = Path(run_dir)
    path = Path(recorded)
    path = path if path.is_absolute() else run_dir / path
    resolved = path.resolve()
    roots = [run_dir.resolve(), *(Path(a).resolve() for a in also)]
    if not any(_within(resolved, root) for root in roots):
        raise UserError(f"{field}: {quote(str(recorded))} is outside the run folder {run_dir}")
    return path


def no_links_out(run_dir: str | Path) -> None:
    """Refuse a run folder whose fixed names (or entries of stages/, .cache/, models/, problems/,
    rounds/, iter*/) are links to somewhere outside it: a run would write or publish through them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    root = run_dir.resolve()
    names = [run_dir / n for n in _TOP]
    names += [p for p in run_dir.iterdir() if p.name.startswith("iter")]
    for folder in [p for p in names if p.is_dir() and not p.is_symlink()]:
        names += list(folder.iterdir())
    for path in names:
        if path.is_symlink() and not _within(path.resolve(), root):
            raise UserError(f"{path}: a link to {quote(os.readlink(path))}, outside the run folder; "
                            "remove it (a run never writes through links)")


def open_no_follow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink at `path` with a UserError (O_NOFOLLOW)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path}: is a link; refusing to write through it") from None
        raise
