"""Outputs written atomically: every file appears complete or not at all, with the permissions the umask allows.

A file is written under a hidden temporary name beside its final one (``.<name>.<random>.part``) and renamed into
place in one step. An exception removes the temporary file; a SIGKILL (or a power cut) between its creation and the
rename can leave it behind. Callers that write a whole folder (``difftem simulate``) therefore write into a staging
folder and rename that into place (:func:`staging_folder`), so such a leftover never reaches the user's folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError, OutputError

_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask, read once: from /proc (no change to the process state) where Linux offers it,
    otherwise by setting and restoring it under a lock."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            _UMASK = _read_umask()
        return _UMASK


def _read_umask() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: the only portable read is a write (another thread may see 022 briefly)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open``: 0o666 less the umask (temporary files are created 0o600)."""
    return 0o666 & ~umask()


def cannot_write(path: str | Path, exc: OSError) -> OutputError:
    """The error for an output that the system refused (permissions, a read-only or missing location, a file where a
    folder should be), naming the path and the reason."""
    return OutputError(f"{path}: cannot be written: {exc.strerror or exc}; choose a location you can write to")


def _not_a_folder(path: Path) -> Path:
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    return path


def blocking_folder(path: str | Path) -> Path | None:
    """The place that keeps ``path`` from being created: its nearest existing ancestor when that is not a folder
    this process may write into (None when ``path`` can be made there)."""
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return None if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK) else parent


def check_output_file(path: str | Path, suffix: str | None = None) -> Path:
    """Before the work: ``path`` can become a file (it is not a folder, its nearest existing ancestor is a folder this
    process may write into, and it ends in ``suffix`` when given: a PNG named .mrc misleads every reader), else
    :class:`OutputError`."""
    path = _not_a_folder(Path(path))
    if suffix is not None and path.suffix.lower() != suffix:
        raise OutputError(f"{path}: this output is written as {suffix[1:].upper()}; give a name ending in {suffix}")
    parent = blocking_folder(path)
    if parent is not None:
        raise OutputError(f"{path}: cannot be written: {parent} is not a folder you can write to; choose another "
                          "location")
    return path


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p`` for an output folder, with :func:`cannot_write`'s error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(folder, exc) from exc
    return folder


def folder_mode() -> int:
    """The mode a new folder gets from ``mkdir``: 0o777 less the umask (``mkdtemp`` creates 0o700)."""
    return 0o777 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, with the mode the
    umask gives a new file. On an exception the temporary file is removed (a SIGKILL can leave it: see the
    module's docstring)."""
    path = _not_a_folder(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())  # after the writer: some writers replace the file they are given
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- whole folders -------------------------------------------------------------------------------------------

_STAGING, _REPLACED = "staging", "replaced"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")


def _aside_name(folder: Path, kind: str) -> str:
    return f".{folder.name}.{kind}-{_host()}-{os.getpid()}-"


def _normal(folder: str | Path) -> Path:
    """An absolute path without ``..``; a link to a folder stands for the folder it names."""
    return Path(os.path.realpath(folder) if os.path.islink(folder) else os.path.abspath(folder))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def stale_folders(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Staging and set-aside folders left beside ``folder`` by runs that were killed: (this host's, whose
    process is gone; other hosts', which cannot be checked from here)."""
    folder = _normal(folder)
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.({_STAGING}|{_REPLACED})-(.+)-(\d+)-[^-]*$")
    dead, foreign = [], []
    with contextlib.suppress(OSError):
        for entry in folder.parent.iterdir():
            m = pattern.match(entry.name)
            if m is None or not entry.is_dir() or entry.is_symlink():
                continue
            if m.group(2) != _host():
                foreign.append(entry)
            elif int(m.group(3)) != os.getpid() and not _pid_alive(int(m.group(3))):
                dead.append(entry)
    return sorted(dead), sorted(foreign)


def clean_stale_folders(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Remove what killed runs left beside ``folder`` (their staging folders; a folder set aside to be replaced
    is put back when ``folder`` itself is missing, i.e. the run died between its two renames). Returns (removed
    or restored, left alone because another host's run may still be writing them)."""
    folder = _normal(folder)
    dead, foreign = stale_folders(folder)
    for entry in dead:
        if f".{_REPLACED}-" in entry.name and not os.path.lexists(folder):
            with contextlib.suppress(OSError):
                os.rename(entry, folder)
                continue
        shutil.rmtree(entry, ignore_errors=True)
    return dead, foreign


def folder_state(folder: str | Path) -> str:
    """``"missing"``, ``"empty"`` (an empty folder), ``"full"`` (a folder with entries) or ``"other"`` (a file,
    a link to a file, something else)."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISDIR(st.st_mode):
        return "other"
    with os.scandir(folder) as it:
        return "full" if next(it, None) is not None else "empty"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def check_inputs_outside(out: str | Path, inputs) -> None:
    """Replacing the folder ``out`` whole (``overwrite``) must not delete what the run reads: an
    :class:`ArgumentError` when one of ``inputs`` is ``out`` or lies inside it (``extract RUN --out RUN
    --overwrite`` replaced the run it had just read by the particles)."""
    try:
        target = Path(out).resolve()
    except (OSError, ValueError):
        return  # the caller's own checks report an unusable path
    for item in inputs:
        try:
            path = Path(item).resolve()
        except (OSError, ValueError):
            continue
        if path == target or target in path.parents:
            raise ArgumentError("out", f" {out}: {'is' if path == target else 'holds'} the input {item}; replacing it "
                                       "would delete the input: choose another output folder")


@contextlib.contextmanager
def staging_folder(folder: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``folder`` to write into; on success it becomes ``folder`` in one
    rename, so ``folder`` is absent (or as it was) until the whole set of files is there. On an exception the
    staging folder is removed; one left by a SIGKILL is removed by the next run into the same folder
    (:func:`clean_stale_folders`).

    ``folder`` may be missing or an empty folder; a folder with files is replaced whole when ``overwrite``
    (swapped with the new one in one step where the system allows, otherwise renamed aside first, then
    deleted), and is an error (``FileExistsError``) otherwise. The callers check this up front with a message
    for the user; this check only guards against a folder that appeared meanwhile.
    """
    folder = _normal(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_folders(folder)
        tmp = Path(tempfile.mkdtemp(prefix=_aside_name(folder, _STAGING), dir=folder.parent))
    except OSError as exc:
        raise cannot_write(folder, exc) from exc
    try:
        yield tmp
        _publish(tmp, folder, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, folder: Path, overwrite: bool) -> None:
    state = folder_state(folder)
    if state == "other":
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(folder))
    if state == "full" and not overwrite:
        raise FileExistsError(errno.ENOTEMPTY, "is not empty", str(folder))
    # an existing (empty or replaced) folder's permissions carry over; a new one gets the umask's
    os.chmod(tmp, stat.S_IMODE(os.stat(folder).st_mode) if state != "missing" else folder_mode())
    if state != "full":
        os.rename(tmp, folder)  # onto a missing or an empty folder: one step
        return
    if _exchange(tmp, folder):  # tmp now holds the old run
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # two renames: killed between them, the old folder waits aside and the next run puts it back
    aside = folder.parent / (_aside_name(folder, _REPLACED) + tmp.name.rsplit("-", 1)[-1])
    os.rename(folder, aside)
    os.rename(tmp, folder)
    shutil.rmtree(aside, ignore_errors=True)


def write_mrc(path: str | Path, data: np.ndarray, pixel_size_a: float, *, volume: bool = False,
              origin_a: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """float32 MRC with the voxel size (Å) in x, y and z of the header and the origin (Å, x y z of voxel
    [0, 0, 0]) set. 2-D arrays are one image; 3-D arrays are an image stack (n, H, W: mz = 1, space group 0)
    unless ``volume``, then a volume (Z, Y, X: mz = nz, space group 1), so programs that read the z spacing from
    the cell see the voxel, not nz times it."""
    arr = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    if volume and arr.ndim != 3:
        raise ValueError(f"a volume is a 3-D array (Z, Y, X); got shape {arr.shape}")
    with atomic_path(path) as tmp, new_mrc(tmp) as mrc:
        mrc.set_data(arr)
        if volume:  # before the voxel size: the cell's z length is mz times the voxel
            mrc.set_volume()
        elif arr.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = pixel_size_a
        mrc.header.origin = tuple(float(v) for v in origin_a)
    return Path(path)


# Files of at least this size are written past the page cache (O_DIRECT) where the system allows it. Buffered, each
# new 4 KiB page of file data is fresh memory; on virtual machines whose host backs guest memory on first touch
# (the project's 2-core machines) that is the copy's cost ×30: a 39 MB stack took 0.25-0.45 s of system time once the
# page cache had grown, against 18-23 ms and no system time written directly (interleaved, 10 pairs). Below it, and
# where the file system refuses, plain writes. DIFFTEM_DIRECT_IO=0 turns it off.
DIRECT_IO_MIN_BYTES = 8 << 20
_DIRECT_CHUNK_BYTES = 8 << 20  # the aligned bounce buffer's size: a multiple of any block size
_DIRECT_ALIGN = 4096


def _direct_io_wanted(nbytes: int) -> bool:
    return (nbytes >= DIRECT_IO_MIN_BYTES and hasattr(os, "O_DIRECT")
            and os.environ.get("DIFFTEM_DIRECT_IO", "1") != "0")


class SequentialWriter:
    """Writes bytes-like pieces back to back from the start of the open file ``fd``; :meth:`finish` cuts the file at
    their end. When ``expected_bytes`` is large (see :data:`DIRECT_IO_MIN_BYTES`) the data goes past the page cache
    through one page-aligned bounce buffer (the pieces' memory need not be aligned; the last block is padded, then cut
    off); where the file system refuses (EINVAL) it carries on with plain writes from where it was."""

    def __init__(self, fd: int, expected_bytes: int):
        self.fd, self.offset, self._filled = fd, 0, 0
        self._flags = self._bounce = self._buf = None
        if _direct_io_wanted(expected_bytes):
            import fcntl
            import mmap

            bounce = mmap.mmap(-1, _DIRECT_CHUNK_BYTES)  # before the flag: a failure here leaves the file as it was
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            except OSError as exc:
                bounce.close()
                if exc.errno != errno.EINVAL:
                    raise
                return
            self._flags, self._bounce, self._buf = flags, bounce, memoryview(bounce)

    def write(self, piece) -> None:
        view = memoryview(piece).cast("B")
        if self._buf is None:
            self.offset = _pwrite_all(self.fd, view, self.offset)
            return
        start = 0
        while start < view.nbytes:
            n = min(view.nbytes - start, _DIRECT_CHUNK_BYTES - self._filled)
            self._buf[self._filled:self._filled + n] = view[start:start + n]
            self._filled, start = self._filled + n, start + n
            if self._filled == _DIRECT_CHUNK_BYTES:
                self._write_bounce(_DIRECT_CHUNK_BYTES)
                if self._buf is None:  # refused: the rest plainly
                    self.offset = _pwrite_all(self.fd, view[start:], self.offset)
                    return

    def finish(self) -> int:
        """Write what is buffered, cut the file at the bytes written; their count."""
        if self._filled:
            self._write_bounce(-(-self._filled // _DIRECT_ALIGN) * _DIRECT_ALIGN)  # padded: cut off below
        self.close()
        os.ftruncate(self.fd, self.offset)
        return self.offset

    def close(self) -> None:
        """Give the file its flags back and free the bounce buffer (also after an error)."""
        if self._buf is not None:
            import fcntl

            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
            self._buf.release()
            self._bounce.close()
            self._buf = self._bounce = None

    def _write_bounce(self, length: int) -> None:
        filled = self._filled
        try:
            with self._buf[:length] as data:  # released before the buffer may be
                _pwrite_all(self.fd, data, self.offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            pending = bytes(self._buf[:filled])
            self.close()  # the file system refuses direct writes: this and what follows written plainly
            self.offset, self._filled = _pwrite_all(self.fd, memoryview(pending), self.offset), 0
            return
        self.offset, self._filled = self.offset + filled, 0


def write_from_start(fd: int, pieces: list) -> None:
    """Write ``pieces`` (bytes-like) back to back from the start of the open file ``fd`` and cut the file at their
    end (see :class:`SequentialWriter`)."""
    writer = SequentialWriter(fd, sum(memoryview(p).nbytes for p in pieces))
    try:
        for p in pieces:
            writer.write(p)
        writer.finish()
    finally:
        writer.close()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    """pwrite until all of ``view`` is written (a write may be short); the offset after it."""
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], offset + done)
    return offset + done


def new_mrc(path: str | Path):
    """``mrcfile.new(path, overwrite=True)`` whose header statistics (dmin, dmax, dmean, rms) are computed one image
    or plane at a time: mrcfile's own takes the whole array's ``std``, a temporary as large as the data (a stack of
    61 × 400² images: 0.3 s of page faults on a loaded machine against 10 ms for the sums; a tomogram: its size again
    in memory); and whose file is written by :func:`write_from_start` (large data past the page cache)."""
    return _chunked_stats_mrc()(str(path), mode="w+", overwrite=True)


@functools.cache
def _chunked_stats_mrc():
    from mrcfile.mrcfile import MrcFile

    class ChunkedStatsMrcFile(MrcFile):
        def update_header_stats(self):
            data = self.data
            if data.ndim < 3 or data.size == 0 or np.iscomplexobj(data):
                return super().update_header_stats()
            lo, hi = data.min(), data.max()  # reductions without temporaries; NaN propagates to both
            if np.isnan(lo):
                warnings.warn("Data array contains NaN values", RuntimeWarning, stacklevel=2)
            if np.isinf(lo) or np.isinf(hi):
                warnings.warn("Data array contains infinite values", RuntimeWarning, stacklevel=2)
            planes = data.reshape(-1, data.shape[-2] * data.shape[-1])
            mean = sum(float(np.add.reduce(p, dtype=np.float64)) for p in planes) / data.size
            square = 0.0
            for p in planes:
                d = p - np.float64(mean)
                square += float(np.dot(d, d))
            self.header.dmin, self.header.dmax = np.float32(lo), np.float32(hi)
            self.header.dmean = np.float32(mean)
            self.header.rms = np.float32(math.sqrt(square / data.size))
            return None

        def flush(self):  # mrcfile's flush (header, extended header, data, cut), written by write_from_start
            if self._read_only:
                return
            self._iostream.flush()
            write_from_start(self._iostream.fileno(), [self.header, self.extended_header,
                                                       np.ascontiguousarray(self.data)])
            self._iostream.seek(0, os.SEEK_END)

    return ChunkedStatsMrcFile


def write_volume(path: str | Path, data: np.ndarray, voxel_size_a: float, *,
                 origin_a: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """A (Z, Y, X) volume as float32 MRC: mz = nz, space group 1, voxel size in x, y and z (see :func:`write_mrc`)."""
    return write_mrc(path, data, voxel_size_a, volume=True, origin_a=origin_a)


def read_mrc(path: str | Path) -> tuple[np.ndarray, float]:
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data).copy(), float(mrc.voxel_size.x)


def write_json(path: str | Path, obj) -> Path:
    """Strict JSON: NaN and ±infinity (a quantity not measured, e.g. an uncertainty without bootstrap refits) are
    written as null, which every JSON reader accepts."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, default=_json_default, allow_nan=False) + "\n")
    return Path(path)


def json_safe(obj):
    """``obj`` with non-finite floats (Python, numpy, in dicts, lists, tuples and arrays) as None."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return json_safe(obj.tolist())
    return obj


def write_npy(path: str | Path, data: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, data)
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
