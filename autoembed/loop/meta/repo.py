"""The loop's own git repository of the target file: every candidate a commit on a ref of its own
(refs/candidates/NNNN), the branch `main` always at the best commit, the working file always main's.

Commits are made with plumbing (hash-object, mktree, commit-tree, update-ref): each step is atomic, no index
is involved, and a kill between steps leaves at worst an unreferenced object, which the next run ignores.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

import git
from gitdb.base import IStream

BRANCH = "main"
AUTHOR = {"GIT_AUTHOR_NAME": "autoembed loop", "GIT_AUTHOR_EMAIL": "loop@autoembed.invalid",
          "GIT_COMMITTER_NAME": "autoembed loop", "GIT_COMMITTER_EMAIL": "loop@autoembed.invalid"}


class TargetRepo:
    def __init__(self, path: Path, filename: str):
        self.path = Path(path)
        self.filename = filename
        self.repo = git.Repo(self.path)

    @classmethod
    def create(cls, path: Path, filename: str, source: str, description: str) -> "TargetRepo":
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        git.Repo.init(path, initial_branch=BRANCH)
        repo = cls(path, filename)
        sha = repo.commit(source, description, parent=None)
        repo.repo.git.update_ref(f"refs/heads/{BRANCH}", sha)
        repo.checkout_best()
        return repo

    @classmethod
    def open(cls, path: Path, filename: str) -> "TargetRepo":
        lock = Path(path) / ".git" / "index.lock"
        if lock.exists():  # left by a kill during checkout; nothing else in this repo uses the index
            lock.unlink()
        return cls(path, filename)

    @classmethod
    def open_if_complete(cls, path: Path, filename: str) -> "TargetRepo | None":
        """The repository at path; None where there is none, or where a kill cut its creation short (before `git
        init` ended, or before the baseline's commit on `main`)."""
        if not (Path(path) / ".git").is_dir():
            return None
        try:
            repo = cls.open(path, filename)
            repo.repo.git.rev_parse("--verify", "--quiet", f"refs/heads/{BRANCH}")
        except (git.InvalidGitRepositoryError, git.GitCommandError):
            return None
        return repo

    @property
    def work_file(self) -> Path:
        return self.path / self.filename

    def commit(self, source: str, description: str, parent: str | None) -> str:
        """A commit holding the file with this content; no ref moves."""
        g = self.repo.git
        blob = self._store("blob", source.encode("utf-8"))
        tree = self._store("tree", b"100644 " + self.filename.encode() + b"\0" + bytes.fromhex(blob))
        args = [tree, "-m", description or "(no description)"] + (["-p", parent] if parent else [])
        with self.repo.git.custom_environment(**AUTHOR):
            return g.commit_tree(*args)

    def add_candidate(self, number: int, source: str, description: str, parent: str) -> str:
        sha = self.commit(source, description, parent)
        self.repo.git.update_ref(candidate_ref(number), sha)
        return sha

    def move_candidate(self, number: int, sha: str, old: str) -> None:
        """Point candidate `number`'s ref at its re-parented commit (idempotent); the commit it replaces keeps a
        ref of its own (refs/reparented/NNNN-<sha>), so the diff as first proposed is never lost."""
        if old != sha:
            self.repo.git.update_ref(f"refs/reparented/{number:04d}-{old[:12]}", old)
        self.repo.git.update_ref(candidate_ref(number), sha)

    def best(self) -> str:
        return self.repo.git.rev_parse(f"refs/heads/{BRANCH}")

    def set_best(self, sha: str) -> None:
        """Move main to sha (idempotent) and make the working file main's."""
        if self.best() != sha:
            self.repo.git.update_ref(f"refs/heads/{BRANCH}", sha)
        self.checkout_best()

    def checkout_best(self) -> None:
        self.repo.git.reset("--hard", f"refs/heads/{BRANCH}")

    def read(self, sha: str) -> str:
        return self.repo.git.show(f"{sha}:{self.filename}", strip_newline_in_stdout=False)

    def candidates(self) -> dict[int, str]:
        refs = self.repo.git.for_each_ref("--format=%(refname) %(objectname)", "refs/candidates/").splitlines()
        return {int(name.rsplit("/", 1)[1]): sha for name, sha in (line.split() for line in refs)}


    def _store(self, kind: str, data: bytes) -> str:
        return self.repo.odb.store(IStream(kind, len(data), io.BytesIO(data))).hexsha.decode()


def candidate_ref(number: int) -> str:
    return f"refs/candidates/{number:04d}"


def three_way_merge(ours: str, base: str, theirs: str) -> str | None:
    """`ours` (an edit of `base`) with the changes from `base` to `theirs` merged in, by git merge-file; None when
    the two edits conflict."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_text(text)
            paths.append(str(path))
        proc = subprocess.run(["git", "merge-file", "-p", *paths], capture_output=True)
    if proc.returncode != 0:  # >0: the number of conflicts; <0: an error
        return None
    return proc.stdout.decode("utf-8")
