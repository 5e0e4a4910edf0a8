"""`python launchers/pack.py ARCHIVE`: this checkout as a .tgz, the code the TPU launcher copies to every worker.

The files are git's view of the working tree (`git ls-files`: tracked files, and untracked ones that are not
ignored, so uncommitted work travels too) less those deleted in the working tree; .venv, runs/ and other
ignored paths stay behind.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files(repo: str = REPO) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout.decode()
    return sorted({name for name in out.split("\0") if name and os.path.lexists(os.path.join(repo, name))})


def pack(archive: str, repo: str = REPO) -> int:
    names = files(repo)
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(os.path.join(repo, name), arcname=name, recursive=False)
    return len(names)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python launchers/pack.py ARCHIVE")
    print(f"{sys.argv[1]}: {pack(sys.argv[1])} files")
