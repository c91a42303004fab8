"""The run directory's guarantees: one run at a time, verified checkpoints, a log that matches them.

* **Lock.** A run holds an exclusive ``flock`` on ``<run>/.lock`` (which records its PID) for its
  whole life. A second run in the same directory is refused with the holder's PID. The kernel drops
  the lock when the holder dies, however it dies, so a run killed with ``kill -9`` leaves no stale
  lock behind for ``--resume`` to trip over.
* **Manifest.** Every checkpoint folder holds ``manifest.json``: the size and SHA-256 of each file,
  written last, before the folder's atomic rename. ``--resume`` checks it and falls back to the
  newest checkpoint that is intact.
* **Log repair.** A checkpoint records how many bytes of ``metrics.jsonl`` it covers. On resume the
  log is cut back to that offset; if it is shorter or damaged, the intact rows up to the
  checkpoint's step are kept, and the user is told what was dropped.
* **What may become a run.** A ``--run-dir`` is used when it is new or empty, when it holds this
  run (``--resume``), or when the user says ``--overwrite``; a folder of other files is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from warmstart.errors import WarmstartError

try:  # POSIX only; elsewhere a run directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".lock"
MANIFEST = "manifest.json"
# what a run writes at its top level (--overwrite removes exactly these, nothing else)
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "checkpoints", "final", "artifacts",
               "tb", ".tmp-final", "summary.json.tmp", "config.yaml.tmp")


class RunLock:
    """An exclusive lock on a run directory for the life of one run (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise WarmstartError(
                f"run directory {Path(self.path).parent} is in use by another warmstart run (PID {holder}). "
                "Two runs in one directory would interleave their logs. Wait for it to finish, stop it, or "
                "choose another --run-dir (nothing was changed)."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, holds the last PID)
            self._fd = None


# ------------------------------------------------------------------------------------- manifests


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and SHA-256 of every file under ``folder`` in ``folder/manifest.json``
    (fsynced: it is what resume trusts)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    path = folder / MANIFEST
    with open(path, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify_manifest(folder: Path) -> str | None:
    """None if every file ``folder/manifest.json`` lists is there with its size and checksum, else
    what is wrong (one phrase). A folder without a manifest (written by an older warmstart) is
    accepted unverified."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its manifest is damaged ({type(e).__name__})"
    for rel, rec in files.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != rec["size"]:
            return f"{rel} has {p.stat().st_size} bytes, {rec['size']} were written"
        if _sha256(p) != rec["sha256"]:
            return f"{rel} does not match the checksum written with it"
    return None


# ------------------------------------------------------------------------------------ metrics log


def repair_metrics(path: Path, offset: int, step: int) -> str | None:
    """Make ``metrics.jsonl`` hold exactly the rows a checkpoint at global ``step`` covers (its first
    ``offset`` bytes). Returns a sentence saying what was repaired, or None when a plain cut sufficed."""
    if not path.exists():
        if offset == 0:
            return None
        path.write_bytes(b"")
        return f"{path} was missing; the rows before step {step} are lost (training resumes exactly)."
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(offset)
    if size >= offset and (offset == 0 or head.endswith(b"\n")) and _all_rows_parse(head):
        with open(path, "r+b") as f:
            f.truncate(offset)
        return None
    # shorter than recorded or damaged: keep every intact row up to the checkpoint's step
    data = head if size >= offset else path.read_bytes()
    kept, dropped = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
        except (ValueError, UnicodeDecodeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_bytes(b"".join(x + b"\n" for x in kept))
    os.replace(tmp, path)
    why = (f"was {size} bytes, shorter than the {offset} its checkpoint recorded" if size < offset
           else "was damaged before the checkpoint's offset")
    last = json.loads(kept[-1])["step"] if kept else 0
    return (f"{path} {why}: kept {len(kept)} intact rows (up to step {last}), dropped {dropped} damaged "
            f"line(s); training resumes exactly from step {step}, only log rows are missing.")


def _all_rows_parse(data: bytes) -> bool:
    try:
        return all(isinstance(json.loads(line), dict) for line in data.split(b"\n") if line.strip())
    except (ValueError, UnicodeDecodeError):
        return False


# ------------------------------------------------------------------------ what may become a run


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a ``--run-dir`` that cannot hold this run, before anything is built or written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise WarmstartError(f"--run-dir {run_dir} is a file, not a directory. Choose a directory path "
                             "(nothing was changed).")
    if resume and overwrite:
        raise WarmstartError("--resume continues a run and --overwrite replaces it; pass one of them.")
    if resume:
        if not run_dir.is_dir():
            raise WarmstartError(f"--resume: {run_dir} does not exist. Give the --run-dir of the run to continue "
                                 "(it holds config.yaml and checkpoints/), or drop --resume to start a new run.")
        if not (run_dir / "config.yaml").exists():
            raise WarmstartError(f"--resume: {run_dir} holds no run (no config.yaml). Give the --run-dir of the "
                                 "run to continue, or drop --resume to start a new run there.")
    else:
        _refuse_others(run_dir, overwrite)


def _refuse_others(run_dir: Path, overwrite: bool) -> None:
    """A run that is not resumed may not mix with an earlier run or with other files."""
    if not run_dir.is_dir() or overwrite:
        return
    if (run_dir / "config.yaml").exists():
        raise WarmstartError(
            f"run directory {run_dir} already holds a run. Pass --resume to continue it, --overwrite to "
            "replace it, or choose another --run-dir (nothing was changed)."
        )
    others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE and p.name not in RUN_OUTPUTS)
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise WarmstartError(
            f"--run-dir {run_dir} is not empty and holds no run ({shown}). A run there would mix with "
            "those files. Choose a new or empty directory, or pass --overwrite to use it anyway (nothing "
            "was changed)."
        )


def claim_run_dir(run_dir: Path, text: str, resume: bool, overwrite: bool) -> None:
    """With the lock held: check the directory may become (or is) this run, then write config.yaml."""
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and resume:
        if cfg_path.read_text(errors="replace") != text:
            raise WarmstartError(
                f"--resume: the recipe differs from the one {run_dir} was started with "
                f"({cfg_path}). Resume with the same recipe and --set overrides, or start a new run dir."
            )
        return
    _refuse_others(run_dir, overwrite)  # again, under the lock: another run may have started meanwhile
    if overwrite:  # remove the earlier run's own outputs only; the user's other files stay
        for name in RUN_OUTPUTS:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    tmp = cfg_path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, cfg_path)
