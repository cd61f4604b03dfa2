"""Writing results so that nothing a user asked for is lost or mixed with an earlier run.

* **Checked first.** :func:`output_dir` and :func:`output_file` resolve an output path (following
  symbolic links; a loop is refused) and check that it can be written, that no file the command
  will write is a directory, and (for figures) that the file name says a format matplotlib writes:
  all before any simulation, so a finished run is never thrown away at the last step.
* **Atomic.** :func:`atomic_write` writes a temporary file beside the target and renames it over
  the target, so a reader (or a crash) sees the old file or the new one, never half of one.
* **One run per directory.** :func:`write_run` records the files of a run in ``.sdsim-run.json``
  and removes the files an earlier run of any command wrote there that this run does not rewrite
  (``run --out d`` then ``run --summary-only --out d`` leaves no stale ``requests.csv``). Files of
  an output name that no manifest accounts for are not deleted: the run is refused before it
  starts, naming them.
* **Locked.** :class:`DirectoryLock` keeps a second sweep out of a directory a sweep is writing: a
  lock file holds the owner's pid, host and start time, and a lock whose process is gone is stale
  and taken over.
"""

from __future__ import annotations

__all__ = [
    "FIGURE_FORMATS",
    "MANIFEST",
    "RUN_OUTPUTS",
    "DirectoryLock",
    "atomic_write",
    "atomic_write_text",
    "figure_format",
    "output_dir",
    "output_file",
    "resolve_output",
    "sidecar_file",
    "write_run",
]

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sdsim.errors import ScenarioError

MANIFEST = ".sdsim-run.json"

# The files the commands that write a run directory produce (`run`, `validate`, `compare`):
# a directory holding one of them that no manifest accounts for is not silently mixed with.
RUN_OUTPUTS = frozenset(
    {
        "requests.csv",
        "steps.csv",
        "summary.json",
        "scenario.yaml",
        "validation.csv",
        "validation.png",
        "comparison.csv",
        "comparison.png",
        "requests.csv.meta.json",
        "steps.csv.meta.json",
        "validation.csv.meta.json",
        "comparison.csv.meta.json",
        "validation-all.csv",
        "validation-all.csv.meta.json",
        "validation-map.png",
    }
)

# What matplotlib's Agg and vector backends write, by file suffix.
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "webp", "tif", "tiff")


def resolve_output(path: str | Path, option: str) -> Path:
    """The absolute path an output goes to, symbolic links followed, checked for writing.

    Parameters
    ----------
    path
        What the user gave.
    option
        The command-line option named in errors (``--out``, ``--plot``).

    Raises
    ------
    ScenarioError
        A symbolic-link loop, a path through a file, or a directory that cannot be written.
    """
    p = Path(path).expanduser()
    try:
        real = p.resolve(strict=False)
    except (RuntimeError, OSError):
        raise ScenarioError(option, f"{path} is a symbolic-link loop") from None
    probe = real
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ScenarioError(option, f"{probe} is not a directory (allowed: a writable directory)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ScenarioError(option, f"directory {probe} is not writable")
    return real


def output_dir(path: str | Path, files: Iterable[str], option: str = "--out") -> Path:
    """Check an output directory before the work that fills it.

    Parameters
    ----------
    path
        The directory (created later, by :func:`write_run`).
    files
        Names the command will write there.
    option
        Named in errors.

    Returns
    -------
    Path
        The resolved directory.

    Raises
    ------
    ScenarioError
        The path is a file, a symbolic-link loop, not writable; one of ``files`` exists there as a
        directory; or the directory holds output files of an earlier run that no manifest
        accounts for (they would be mixed with this run's).
    """
    d = resolve_output(path, option)
    if d.exists() and not d.is_dir():
        raise ScenarioError(option, f"{path} is a file (allowed: a directory)")
    names = list(files)
    for name in names:
        target = d / name
        if target.is_dir():
            raise ScenarioError(option, f"{target} is a directory; {name} cannot be written")
    if d.is_dir():
        owned = set(_manifest(d).get("files", []))
        foreign = sorted(
            f.name
            for f in d.iterdir()
            if f.name in RUN_OUTPUTS and f.name not in names and f.name not in owned
        )
        if foreign:
            raise ScenarioError(
                option,
                f"{path} holds {', '.join(foreign)} of an earlier run that this run would not "
                f"replace; remove {'it' if len(foreign) == 1 else 'them'} or choose another "
                "directory",
            )
    return d


def output_file(path: str | Path, option: str, figure: bool = False) -> Path:
    """Check one output file (a figure, a fitted scenario) before the work that produces it.

    Parameters
    ----------
    path
        The file.
    option
        Named in errors.
    figure
        The file is a matplotlib figure: its suffix must name a format in
        :data:`FIGURE_FORMATS`; a name without a suffix is written as PNG under exactly that name.

    Returns
    -------
    Path
        The resolved file path.

    Raises
    ------
    ScenarioError
        The path is a directory or cannot be written, or a figure suffix no backend writes.
    """
    p = resolve_output(path, option)
    if p.is_dir():
        raise ScenarioError(option, f"{path} is a directory (allowed: a file name)")
    if figure and p.suffix:
        fmt = p.suffix[1:].lower()
        if fmt not in FIGURE_FORMATS:
            raise ScenarioError(
                option,
                f"cannot write a figure as {p.suffix!r}; allowed: "
                + ", ".join(f".{f}" for f in FIGURE_FORMATS)
                + " (no suffix: PNG)",
            )
    return p


def figure_format(path: Path) -> str:
    """The matplotlib format a checked figure path is written in (PNG when it has no suffix)."""
    return path.suffix[1:].lower() if path.suffix else "png"


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a file through a temporary name in the same directory, then rename it into place.

    Parameters
    ----------
    path
        The final file (its directory must exist).
    write
        Called with the temporary path (same suffix as ``path``, so writers that pick a format by
        suffix pick the right one) and writes the whole file there.

    Returns
    -------
    Path
        ``path``.
    """
    final = Path(path)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp{final.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:  # durable before it replaces the old file
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def sidecar_file(name: str, seed: int | None, **extra: Any) -> tuple[str, Callable[[Path], Any]]:
    """The provenance record ``<name>.meta.json`` of a run file (:func:`sdsim.provenance.sidecar`)
    as a :func:`write_run` entry: its name and its writer."""
    from sdsim.provenance import provenance, sidecar_path

    text = json.dumps(provenance(seed, file=name, **extra), indent=1) + "\n"
    return sidecar_path(name).name, lambda p: p.write_text(text)


def _manifest(d: Path) -> dict[str, Any]:
    try:
        data = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return {}
    return data


def write_run(
    directory: Path, files: Mapping[str, Callable[[Path], Any]], command: str
) -> list[Path]:
    """Write one run's files into a directory checked by :func:`output_dir`, atomically, and leave
    only them there.

    Parameters
    ----------
    directory
        The resolved directory (created if absent).
    files
        File name -> writer (called with a temporary path, see :func:`atomic_write`).
    command
        The command that wrote the run (recorded in the manifest).

    Returns
    -------
    list of Path
        The files written, in order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp*"):  # temporary files of a killed writer
        with contextlib.suppress(OSError):
            stale.unlink()
    old = set(_manifest(directory).get("files", []))
    written = [atomic_write(directory / name, w) for name, w in files.items()]
    for name in sorted(old - set(files)):
        target = directory / name
        if target.is_file() or target.is_symlink():
            target.unlink()
    record = {"command": command, "files": list(files), "written_at": time.time()}
    atomic_write_text(directory / MANIFEST, json.dumps(record, indent=1) + "\n")
    return written


# --------------------------------------------------------------------------- locking


def _process_start(pid: int) -> str | None:
    """A token that changes when ``pid`` is reused (Linux: the start time in /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: fields after its closing parenthesis
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None:
        now = _process_start(pid)
        return now is None or now == start
    return True


class DirectoryLock:
    """An exclusive lock on an output directory, held while one process writes it.

    The lock is a file (``name`` in the directory) created with ``O_EXCL`` and holding the owner's
    pid, host, process start time and the time it was taken. A second process is refused with one
    line naming the owner. A lock left by a process that no longer runs on this host (killed, or
    its pid reused by another process) is stale: it is removed and taken over, and
    :attr:`took_over` says whose it was.

    Parameters
    ----------
    directory
        The directory (created if absent).
    name
        Lock file name.
    option
        Named in the refusal.
    """

    def __init__(self, directory: Path, name: str = ".sdsim.lock", option: str = "--out") -> None:
        self.path = Path(directory) / name
        self.option = option
        self.took_over: dict[str, Any] | None = None
        self._held = False

    def _owner(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> DirectoryLock:
        """Take the lock (refusing if a live process holds it); returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "since": time.time(),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                if not owner:
                    # being written by its owner this instant, or garbage: look again shortly
                    time.sleep(0.05)
                    owner = self._owner()
                pid = owner.get("pid")
                same_host = owner.get("host") == me["host"]
                if isinstance(pid, int) and (not same_host or _alive(pid, owner.get("start"))):
                    since = time.strftime(
                        "%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since") or 0))
                    )
                    where = "" if same_host else f" on {owner.get('host')}"
                    raise ScenarioError(
                        self.option,
                        f"{self.path.parent} is in use by another sweep (pid {pid}{where}, since "
                        f"{since}); wait for it to finish or choose another directory (if no "
                        f"sweep runs, delete {self.path})",
                    ) from None
                self.took_over = owner or {"pid": None}
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._held = True
            return self
        raise ScenarioError(self.option, f"cannot take the lock {self.path}")

    def release(self) -> None:
        """Give the lock back (only if this process still owns it)."""
        if self._held and self._owner().get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._held = False

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
