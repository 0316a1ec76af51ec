"""File-mode helpers for atomically written outputs.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask; a file renamed into place from it stays
0600, so another user (a node running under a service account) cannot read an exported checkpoint. Call
:func:`chmod_like_new_file` on the temporary file before the rename: it gets the mode ``open(path, 'w')`` would have
given (0666 minus the process umask, e.g. 0644 under umask 022).
"""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, 'os.PathLike[str]']


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    try:
        with open('/proc/self/status', encoding='ascii', errors='replace') as fh:
            for line in fh:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic set-and-restore (briefly process-wide)
    os.umask(mask)
    return mask


def chmod_like_new_file(path: PathLike, mode: int = 0o666) -> None:
    """Give ``path`` the permissions a newly created file gets: ``mode & ~umask``."""
    os.chmod(path, mode & ~current_umask())
