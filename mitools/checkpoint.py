"""Safe, atomic training checkpoints.

Schema (a plain dict; every value must load with ``torch.load(weights_only=True)``: tensors, dicts,
lists, tuples, str, int, float, bool, None - no numpy arrays, Paths or custom classes; use
:func:`to_plain` on configs):

    ============== ==============================================================================
    key            content
    ============== ==============================================================================
    model          ``SSLModel.state_dict()`` (required)
    epoch          int, epochs completed (required)
    step           int, optimiser steps completed (required)
    optimizer      ``optimizer.state_dict()``
    scheduler      ``WarmupCosineLR.state_dict()``
    scaler         ``torch.amp.GradScaler.state_dict()`` or None
    ema            ``MomentumEncoder.state_dict()`` or None
    loss_state     ``loss.state_dict()`` (running scales / covariances of stateful losses) or None
    rng            :func:`capture_rng_state` output
    config         plain dict of the run's configuration
    encoder_spec   ``EncoderSpec.to_dict()``
    mitools_version str
    ============== ==============================================================================

Writes are atomic: :func:`save_checkpoint` (and :func:`atomic_write_bytes` /
:func:`atomic_write_text` for other files, e.g. result JSONs) writes a temporary file in the same
folder, fsyncs it and ``os.replace``-s it over the target, so a crash leaves either the old or the
new file. The new file's permissions are those of a normally created file, ``0o666 & ~umask``
(e.g. ``-rw-r--r--`` under umask 022), so group members of a shared cluster can read checkpoints
when the umask allows it (``tempfile.mkstemp`` would give ``0o600`` whatever the umask).
:func:`load_checkpoint` never unpickles code (``weights_only=True`` only) and turns every failure
into a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import random
import re
import secrets
import signal
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_KEYS",
    "REQUIRED_KEYS",
    "CheckpointError",
    "GracefulExit",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng_state",
    "find_latest_checkpoint",
    "folder_write_problem",
    "load_checkpoint",
    "mitools_version",
    "restore_rng_state",
    "save_checkpoint",
    "to_plain",
]

CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "ema",
    "loss_state",
    "rng",
    "epoch",
    "step",
    "config",
    "encoder_spec",
    "mitools_version",
)
REQUIRED_KEYS = ("model", "epoch", "step")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and the problem."""


def mitools_version() -> str:
    """Installed mitools version (``"unknown"`` when not installed)."""
    try:
        from importlib.metadata import version

        return version("mitools")
    except Exception:
        return "unknown"


def to_plain(obj: Any) -> Any:
    """Recursively convert to types ``weights_only`` accepts.

    dataclasses and Mappings -> dict (str keys kept as is), tuples/lists/sets -> list, Path -> str,
    numpy scalars -> Python scalars, numpy arrays -> tensors, ``argparse.Namespace`` -> dict.
    Tensors and plain scalars pass through; anything else raises ValueError naming its type.
    """
    if isinstance(obj, np.generic):  # before float: np.float64 subclasses float
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif hasattr(obj, "__dict__") and type(obj).__name__ == "Namespace":
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    raise ValueError(f"cannot store a {type(obj).__name__} in a weights_only checkpoint")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new hidden file ``.NAME.<random>.tmp`` next to ``path``; returns (fd, its path).

    Opened with mode ``0o666`` and ``O_EXCL``, so the kernel applies the umask (and a folder's
    default ACL) exactly as for a normally created file; ``tempfile.mkstemp`` forces ``0o600``.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """The one atomic-write implementation: ``write(f)`` fills a temporary file in ``path``'s folder
    (created, parents too, if missing), which is flushed, fsynced, passed to ``check`` (if given)
    and renamed over ``path``; the folder is then fsynced. On any failure the temporary file is
    removed and a previous ``path`` is untouched. Mode: ``0o666 & ~umask`` (see :func:`_create_temp`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (folder created if missing); returns the path.

    Temporary file in the same folder, fsync, ``os.replace``: a crash leaves the old file or the
    new one, never a partial one, and no temporary file is left after an exception. The new file's
    mode is ``0o666 & ~umask``, as for ``open(path, "wb")``.
    """
    return _atomic_write(path, lambda f: f.write(bytes(data)))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding`` (UTF-8 by default; no
    newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def folder_write_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be written into ``folder``, or None when they can; for checking an output
    folder before any work.

    Creates the folder (parents too), then creates and removes one temporary file exactly as the
    atomic writers here do, so whatever would make the real write fail is found now: a file in the
    way, a read-only folder or mount (which ``os.access`` misses for root), a file system that
    refuses new files (``/proc``). The reason is one phrase about the folder, without its path
    (callers prefix the flag or name they report), e.g. ``"exists and is not a folder"`` or
    ``"cannot create the folder (/a/file is not a folder)"``.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        return "exists and is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in folder.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            return f"cannot create the folder ({blocker} is not a folder)"
        return f"cannot create the folder ({exc.strerror or exc})"
    try:
        fd, tmp = _create_temp(folder / "write-check")
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # the folder exists (made above), yet no file can be made
            return (
                "cannot create a file in the folder (it exists but refuses new files, as virtual "
                "file systems such as /proc do); choose another folder"
            )
        return f"the folder is not writable ({exc.strerror or exc})"
    os.close(fd)
    tmp.unlink(missing_ok=True)
    return None


def save_checkpoint(
    path: str | os.PathLike[str], state: Mapping[str, Any], verify: bool = False
) -> Path:
    """Atomically write ``state`` with ``torch.save``; returns the path.

    The data go to a hidden temporary file in the destination folder (created if missing), which
    is flushed, fsynced and then renamed over ``path`` (``os.replace`` is atomic on POSIX and
    Windows); on any failure the temporary file is removed and the previous ``path`` is untouched.
    The file's mode is ``0o666 & ~umask``, as for a normally created file. ``verify=True``
    reloads the temporary file with :func:`load_checkpoint` (``weights_only``) before the rename,
    so a state holding non-plain objects fails at save time rather than at resume time.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a dict, got {type(state).__name__}")
    state = dict(state)
    check = (lambda tmp: load_checkpoint(tmp, required=())) if verify else None
    return _atomic_write(path, lambda f: torch.save(state, f), check)


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _diagnose_header(path: Path) -> None:
    """Raise CheckpointError for files that cannot be a torch checkpoint, before unpickling."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: truncated or corrupt zip archive ({size} bytes; central directory "
                "missing) - an interrupted write?"
            )
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{path}: corrupt zip archive: {_first_line(exc)}") from exc
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(
                f"{path}: a zip archive but not a torch checkpoint (no data.pkl; members: "
                f"{names[:3]})"
            )
        return
    if head.startswith(b"\x80"):  # a pickle protocol opcode: legacy (pre-1.6) torch format
        return
    if _looks_like_text(head):
        raise CheckpointError(f"{path}: a text file, not a torch checkpoint (starts {head[:40]!r})")
    raise CheckpointError(f"{path}: not a zip archive or a torch checkpoint (starts {head[:8]!r})")


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    required: Iterable[str] = REQUIRED_KEYS,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` only.

    ``mmap=True`` maps the tensors' storage from the file instead of reading it (cheap metadata
    reads such as epoch/step; a truncated file still fails, damaged tensor bytes would only show
    on access).

    Raises FileNotFoundError for a missing path and :class:`CheckpointError` (a ValueError) with
    a one-line message for: an empty file, a truncated/corrupt zip, a text file, a zip that is not
    a torch checkpoint, a pickle the safe loader refuses (it references a global such as
    ``os.system``, or a non-plain class), a top level that is not a dict, or missing ``required``
    keys (default :data:`REQUIRED_KEYS`; pass ``()`` to skip the check).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    _diagnose_header(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
            match = re.search(r"GLOBAL ([\w.]+)", text)
            reason = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
            what = (
                f"it references {match.group(1)}"
                if match
                else (reason.group(1).strip() if reason else _first_line(exc))
            )
            raise CheckpointError(
                f"{path}: refused by the safe (weights_only) loader: {what}, which could run code "
                "or is not a plain type; re-save with plain types (mitools.checkpoint.to_plain)"
            ) from exc
        raise CheckpointError(f"{path}: unreadable checkpoint: {_first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: top-level object is a {type(state).__name__}, expected dict"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing required keys {missing} (has {sorted(state)[:12]})")
    return state


def _as_int(value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return int(value.item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return -1


def find_latest_checkpoint(
    run_dir: str | os.PathLike[str], suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES
) -> Path | None:
    """Newest VALID checkpoint in ``run_dir`` (not recursive), or None.

    Every candidate (name ending in one of ``suffixes``, not hidden - temporary files from
    :func:`save_checkpoint` are hidden) is loaded with :func:`load_checkpoint`; files that fail
    (corrupt, partial, unsafe, missing keys) are skipped with a warning. The newest is the largest
    ``(epoch, step)`` stored inside, ties broken by modification time. Candidates are
    memory-mapped (``mmap=True``), so the scan reads little more than their metadata.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    best: tuple[tuple[int, int, int], Path] | None = None
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith(".") or path.suffix not in suffixes or not path.is_file():
            continue
        try:
            # mmap: only epoch/step are read here; the chosen file is loaded in full later
            state = load_checkpoint(path, map_location="cpu", mmap=True)
        except (CheckpointError, OSError) as exc:
            warnings.warn(f"skipping invalid checkpoint: {exc}", stacklevel=2)
            continue
        key = (_as_int(state.get("epoch")), _as_int(state.get("step")), path.stat().st_mtime_ns)
        del state
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]


def capture_rng_state() -> dict[str, Any]:
    """States of Python ``random``, numpy's global RNG, torch CPU and (if initialised) CUDA.

    Stored as tensors and plain scalars so the dict loads with ``weights_only=True`` (numpy's
    ``get_state()`` tuple holds an ndarray, which the safe loader refuses).
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # noqa: NPY002 (global RNG on purpose)
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored when CUDA is available
    and the stored device count matches (otherwise a warning)."""
    py = state["python"]
    random.setstate(
        (int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
    )
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global RNG is what must be restored)
        (
            npst["bit_generator"],
            npst["keys"].cpu().numpy().astype(np.uint32),  # cpu(): map_location may move it
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])
        else:
            warnings.warn("stored CUDA RNG states not restored: device count differs", stacklevel=2)


class GracefulExit:
    """Turn SIGTERM / SIGINT into a flag the training loop polls, so it can checkpoint and exit.

    ::

        with GracefulExit() as stop:
            for step in ...:
                train_step()
                if stop.requested:
                    save_checkpoint(...)
                    break

    The first signal sets ``requested`` (and ``signal_name``). A repeat within
    ``repeat_grace_s`` seconds of the first is the same request delivered twice and is ignored:
    a cluster scheduler signals every process of a job, and torchrun's agent forwards the signal
    it got to its workers, so under ``srun torchrun`` each worker gets SIGTERM twice, 1 ms apart
    (measured here). A later one goes to the previous handler (a second Ctrl-C raises
    KeyboardInterrupt; a second SIGTERM with the default handler ends the process). Handlers
    are only installed from the main thread (elsewhere the object is inert and warns); the
    previous handlers are restored on exit.
    """

    def __init__(
        self,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
        repeat_grace_s: float = 2.0,
    ) -> None:
        if not repeat_grace_s >= 0:
            raise ValueError(f"repeat_grace_s must be >= 0, got {repeat_grace_s!r}")
        self.signals = tuple(signals)
        self.repeat_grace_s = float(repeat_grace_s)
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested and signum in self._previous:
            if now - self._first_at < self.repeat_grace_s:
                return
            previous = self._previous[signum]
            if callable(previous):
                previous(signum, frame)
                return
            if previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._first_at = now

    def install(self) -> GracefulExit:
        if threading.current_thread() is not threading.main_thread():
            warnings.warn("GracefulExit: not in the main thread, signals not handled", stacklevel=2)
            return self
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> GracefulExit:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
