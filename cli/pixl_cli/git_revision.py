"""The allow-lists and projects of a git revision, written out for ``pixl allowlist diff``.

Both sides of a comparison must be loaded by the same code that loads them in production
(``load_project_file``), or the diff could disagree with what the engine does. So a revision's
``tag_allowlists/`` and ``projects/`` are written out from git's object store into a temporary
folder (``git ls-tree`` + ``git cat-file``: no checkout, the work tree is never touched) and
loaded from there, exactly like the work tree.

Every failure is one line naming the fix: git missing, a folder that is not a repository, a
revision git does not know.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from pixl_core.errors import PixlConfigError

if TYPE_CHECKING:
    from pixl_core.config.allowlist_diff import ConfigTree  # pydicom: see pixl_cli.main

CONFIG_FOLDERS = ("tag_allowlists", "projects")
WORK_TREE = "work tree"
_REGULAR_FILE_MODES = frozenset({"100644", "100755"})
MAX_REVISION_LENGTH = 200


class GitRevisionError(PixlConfigError):
    """A folder that is not a git repository, or a revision it does not have."""

    code = "git_revision"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise GitRevisionError(
            "git is not installed: install it (apt-get install git) to compare revisions"
        ) from None


def repository_root(folder: Path) -> Path:
    """The top of the git work tree ``folder`` is in, or a one-line error."""
    if not folder.is_dir():
        raise GitRevisionError(f"{folder} is not a folder: give the clone of the repository")
    done = _git(folder, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise GitRevisionError(
            f"{folder} is not a git repository: run this inside a clone of the repository that "
            "holds projects/ and tag_allowlists/, or give it with --repo"
        )
    return Path(done.stdout.decode().strip())


def resolve(repo: Path, revision: str) -> str:
    """The commit ``revision`` names (a branch, tag, ``HEAD~1``, a hash...), or a one-line error."""
    if not revision or revision.startswith("-") or len(revision) > MAX_REVISION_LENGTH:
        raise GitRevisionError(
            "a revision must be a branch, tag or commit (e.g. origin/main or HEAD~1)"
        )
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if done.returncode != 0:
        raise GitRevisionError(
            f"unknown revision '{revision}' in {repo}: check the name, or fetch it first "
            "(git fetch origin; a shallow clone needs fetch-depth 0)"
        )
    return done.stdout.decode().strip()


def write_out(repo: Path, revision: str, target: Path) -> ConfigTree:
    """Write the revision's ``projects/`` and ``tag_allowlists/`` under ``target``."""
    commit = resolve(repo, revision)
    listing = _git(repo, "ls-tree", "-r", "-z", "--full-tree", commit, "--", *CONFIG_FOLDERS)
    if listing.returncode != 0:
        raise GitRevisionError(f"git could not list revision '{revision}' in {repo}")
    for record in listing.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, kind, blob = meta.decode().split()
        if kind != "blob" or mode not in _REGULAR_FILE_MODES:
            continue  # symlinks and submodules are not configuration
        relative = Path(raw_path.decode())
        content = _git(repo, "cat-file", "blob", blob)
        if content.returncode != 0:
            raise GitRevisionError(f"git could not read {relative} at revision '{revision}'")
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.stdout)
    for folder in CONFIG_FOLDERS:
        (target / folder).mkdir(parents=True, exist_ok=True)
    from pixl_core.config.allowlist_diff import ConfigTree

    return ConfigTree(label=f"{revision} ({commit[:10]})", root=target)


def work_tree(repo: Path) -> ConfigTree:
    """The files as they are on disk now, committed or not."""
    from pixl_core.config.allowlist_diff import ConfigTree

    return ConfigTree(label=WORK_TREE, root=repo)
