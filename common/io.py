"""File-level helpers: array files, Python-2 pickles, atomic writes.

Every failure is re-raised as `DataError` naming the file and what was expected, so entry
points can print one line instead of a NumPy/pickle traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import shutil
import tempfile
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from common.errors import ConfigError, DataError, op_error_reason

ARRAY_EXTENSIONS = (".npy", ".mat", ".h5")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def require_folder(folder: str, how_to_get: str) -> None:
    """A data folder that is missing, or a file given where its folder belongs: one message each."""
    if folder and os.path.isfile(folder):
        raise DataError(f"data folder {folder!r} is a file; give the folder that holds it and its companion "
                        f"files. {how_to_get}")
    if not folder or not os.path.isdir(folder):
        raise DataError(f"data folder {folder!r} does not exist. {how_to_get}")


def require_files(folder: str, names: Sequence[str], how_to_get: str) -> None:
    """Raise one message listing every missing file of a release layout."""
    require_folder(folder, how_to_get)
    missing = [n for n in names if not os.path.exists(os.path.join(folder, n))]
    if missing:
        raise DataError(
            f"missing {', '.join(missing)} in {folder}. {how_to_get}")


def load_pickle(path: str) -> Any:
    """Python-2 `cPickle` files (the releases' format) need latin-1 decoding in Python 3."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as e:  # corrupt or truncated pickles raise many types
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def unwrap(obj: Any) -> Any:
    """Pickled dicts sometimes arrive wrapped in a 0-d object array (`.item()` in loaders)."""
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        return obj.item()
    return obj


def as_matrix(obj: Any, path: str, dim: Optional[int] = None) -> np.ndarray:
    """A 2-D float32 array from a 2-D array or a sequence of 1-D vectors."""
    obj = unwrap(obj)
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "c":
        raise DataError(f"{path}: holds complex numbers; features must be real")
    try:
        if isinstance(obj, np.ndarray) and obj.dtype != object:
            with np.errstate(over="ignore"):
                arr = np.asarray(obj, dtype=np.float32)
        else:
            arr = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in obj])
    except Exception as e:
        raise DataError(f"{path}: expected a 2-D float array or a list of equal-length "
                        f"vectors ({e})") from None
    if arr.ndim != 2:
        hint = ""
        if isinstance(obj, np.ndarray) and obj.dtype.names:
            hint = f" (a structured array with fields {', '.join(obj.dtype.names)}: save the feature matrix itself)"
        elif arr.ndim > 2 and arr.shape[0] and sorted(arr.shape[1:])[-2] == 1:
            hint = (" (all its axes after the first but one have size 1, like a CNN's pooled output: "
                    "save arr.reshape(len(arr), -1))")
        raise DataError(f"{path}: expected a 2-D (n, dim) array, got shape {arr.shape}{hint}")
    if arr.shape[1] == 0:
        raise DataError(f"{path}: the vectors have no columns (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{path}: expected {dim} columns, got {arr.shape[1]}")
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f" and obj.dtype.itemsize > 4:
        overflow = np.argwhere(np.isinf(arr) & np.isfinite(obj))
        if overflow.size:
            r, c = overflow[0]
            raise DataError(f"{path}: value {obj[r, c]:g} at row {r}, column {c} is beyond float32's "
                            "range (about 3.4e38); features are read as float32, so rescale them")
    return arr


def as_int_labels(obj: Any, path: str) -> np.ndarray:
    """Int class ids from a list/array of shape (n,) or (n, 1)."""
    obj = unwrap(obj)
    try:
        arr = np.asarray(obj)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"shape {arr.shape}")
        if arr.dtype.kind in "USO" and arr.size:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}: labels are names ({', '.join(map(str, arr[:3]))}, ...), not class ids: save "
                    "np.unique(names, return_inverse=True)[1] as the labels and the unique names, one per line, "
                    "as class_names.txt") from None
        bad = np.flatnonzero(~np.equal(np.mod(arr.astype(np.float64), 1), 0))
        if bad.size:
            raise ValueError(f"row {bad[0]} holds {arr[bad[0]].item()}; {bad.size} row(s) are not whole numbers")
        return arr.astype(np.int64)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: expected integer class ids of shape (n,) or (n, 1) ({e})") from None


def find_array_file(folder: str, stem: str) -> Optional[str]:
    """The one `<stem>.npy|.mat|.h5` in `folder`, None if absent; two of them is an error."""
    found = [os.path.join(folder, stem + ext) for ext in ARRAY_EXTENSIONS
             if os.path.exists(os.path.join(folder, stem + ext))]
    if len(found) > 1:
        raise DataError(f"{folder}: both {' and '.join(os.path.basename(f) for f in found)} "
                        f"exist; keep one")
    return found[0] if found else None


NPY_MAGIC = b"\x93NUMPY"


def load_npz(path: str, needed: Sequence[str]) -> dict:
    """The named arrays of an `.npz` archive; a missing, damaged or incomplete archive is a
    `DataError` naming the file and what it holds (NumPy reports a non-zip file as 'pickled data')."""
    import zipfile

    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (not a zip file); write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [n for n in needed if n not in archive.files]
            if missing:
                raise DataError(f"{path}: lacks the array(s) {missing}; it holds {sorted(archive.files)}")
            return {n: archive[n] for n in needed}
    except DataError:
        raise
    except Exception as e:  # a damaged member, an object array
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def load_array(path: str) -> np.ndarray:
    """`.npy`, `.mat` (v5 or v7.3) or `.h5`; .mat/.h5 hold one variable named like the file."""
    stem = os.path.splitext(os.path.basename(path))[0]
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            with open(path, "rb") as f:
                if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                    raise DataError(f"{path}: not a .npy file (no NumPy header); write it with numpy.save")
            try:
                return np.load(path, allow_pickle=False)
            except ValueError as e:
                if "allow_pickle" not in str(e):
                    raise
                raise DataError(f"{path}: holds Python objects (a pickled object array), which are never "
                                "loaded; save a numeric array, e.g. numpy.save(path, np.stack(rows).astype('float32'))"
                                ) from None
        if ext == ".mat":
            return _load_mat_variable(path, stem)
        if ext == ".h5":
            return _load_h5_variable(path, stem, transpose=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    raise DataError(f"{path}: unsupported extension (use one of {', '.join(ARRAY_EXTENSIONS)})")


def load_mat(path: str, names: Sequence[str], optional: Sequence[str] = ()) -> dict:
    """Named variables of a MATLAB file (v5 via scipy, v7.3/HDF5 via h5py, transposed to MATLAB's shape).

    A missing file, an unreadable file or a missing required variable is a `DataError` that
    names the file and the variables it holds.
    """
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    wanted = list(names) + list(optional)
    try:
        import scipy.io

        try:
            contents = scipy.io.loadmat(path, variable_names=wanted)
            keys = {w[0] for w in scipy.io.whosmat(path)}
        except NotImplementedError:
            import h5py

            with h5py.File(path, "r") as f:
                keys = set(f.keys())
                contents = {k: np.asarray(f[k]).T for k in wanted if k in f}
    except DataError:
        raise
    except Exception as e:  # scipy/h5py raise many types for damaged files
        raise DataError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    missing = [n for n in names if n not in contents]
    if missing:
        have = sorted(k for k in keys if not k.startswith("__") and k != "#refs#")
        raise DataError(f"{path}: lacks the variable(s) {missing}; it holds {have}")
    return {k: contents[k] for k in wanted if k in contents}


def _pick_variable(keys: Iterable[str], stem: str, path: str) -> str:
    keys = [k for k in keys if not k.startswith("__") and k != "#refs#"]
    if stem in keys:
        return stem
    if len(keys) == 1:
        return keys[0]
    raise DataError(f"{path}: expected one variable named {stem!r}, found {sorted(keys)}")


def _load_mat_variable(path: str, stem: str) -> np.ndarray:
    import scipy.io

    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5, stored column-major
        return _load_h5_variable(path, stem, transpose=True)
    except ValueError as e:
        import h5py

        if h5py.is_hdf5(path):  # MATLAB's own v7.3 files carry a header (handled above); without it the
            raise DataError(    # writer, and so the array order, is unknown
                f"{path}: an HDF5 file without MATLAB's v7.3 header, so its array order is unknown; save it "
                "with MATLAB's save -v7.3, or rename it to .h5 to read its arrays as stored (row i = item i)") from None
        raise DataError(f"{path}: not a MATLAB file ({e})") from None
    return np.asarray(contents[_pick_variable(contents.keys(), stem, path)])


def _load_h5_variable(path: str, stem: str, transpose: bool) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        key = _pick_variable(f.keys(), stem, path)
        if not isinstance(f[key], h5py.Dataset):
            raise DataError(f"{path}: '{key}' is an HDF5 group, not an array; store the array itself as a dataset "
                            f"named {stem!r}")
        arr = np.asarray(f[key])
    return arr.T if transpose else arr


def read_lines(path: str) -> list:
    """Non-empty stripped lines of a UTF-8 text file; a file that is not UTF-8 is a `DataError`."""
    return [line for line in read_lines_raw(path) if line]


def read_rows(path: str, what: str) -> list:
    """One entry per line, row i = item i (class names, ids): a blank line inside the file would
    shift every later row onto the wrong item, so it is an error; blank lines at the end are not."""
    lines = read_lines_raw(path)
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise DataError(f"{path}: line {blank[0]} is empty; the file holds one {what} per line, line i for item i, "
                        "so every line needs one")
    return lines


def read_lines_raw(path: str) -> list:
    """Every stripped line of a UTF-8 text file, blank ones included."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, expected a text file") from None


# --------------------------------------------------------------------------- outputs a user owns

def check_output_file(path: str, overwrite: bool, flag: str = "--out") -> None:
    """An output file may be written only where nothing is, or over a file the user named with
    --overwrite; never over a folder. Checked before any work."""
    if not path:
        raise ConfigError(f"{flag} is required")
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; name the file to write")
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")


def check_output_dir(path: str, overwrite: bool, owned: str, flag: str = "--out", what: str = "output") -> bool:
    """An output folder: new or empty, or one this tool wrote before (it holds `owned`), replaced
    only with --overwrite. Anything else is refused (never deleted). True when it exists."""
    if not path:
        raise ConfigError(f"{flag} is required")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    if not os.path.isdir(path) or not os.listdir(path):
        return os.path.isdir(path)
    if not os.path.exists(os.path.join(path, owned)):
        raise ConfigError(f"{flag} {path} is not empty and is not a previous {what} (no {owned} in it); nothing "
                          "was changed: choose a new or empty folder")
    if not overwrite:
        raise ConfigError(f"{flag} {path} holds a previous {what}; pass --overwrite to replace it, or choose "
                          "another folder")
    return True


@contextlib.contextmanager
def replacing_dir(out: str):
    """Build an output folder in a temporary folder beside `out` (yielded) and put it in place only
    once complete: a previous one (checked by `check_output_dir`) is replaced whole, so nothing of it
    is mixed with the new; a failure leaves the previous folder as it was and no temporary one."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(os.path.abspath(out)) + "-", dir=parent)
    old = tmp + "-previous"  # the previous folder, moved aside (not deleted) until the new one is in place
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700
        if os.path.exists(out):
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        if os.path.exists(old) and not os.path.exists(out):
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp in str(e) and (isinstance(e, OSError) or type(e).__module__.startswith("tensorflow")):
            # the temporary folder is gone: name the output and the OS's reason instead
            raise OSError(getattr(e, "errno", None) or errno.EIO,
                          f"{op_error_reason(e)} while writing it; nothing was changed", out) from None
        raise


def remove_stale(folder: str, own: Iterable[str], written: Iterable[str]) -> list:
    """After an --overwrite run has written `written` into `folder`: remove the files of the previous
    output among `own` (the names this tool ever writes) that it did not write again, so the folder
    describes this run alone (a stale val split or unseen list would otherwise be read with it).
    Returns the names removed; files of other names (a user's) are never touched."""
    removed = []
    for name in sorted(set(own) - set(written)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.unlink(path)
            removed.append(name)
    return removed


# --------------------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """Write to a temporary file beside `path`, rename over it only on success.

    A crash or exception mid-write leaves the previous file untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of this output file", path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; a result file gets the modes open() would give
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # name the file the user asked for, not the temporary one
        raise OSError(e.errno, f"cannot write ({e.strerror or e}); the previous file, if any, is unchanged",
                      path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read JSON ({e})") from None


def file_stamp(path: str) -> str:
    """`size:mtime_ns` of a file ('missing' when it cannot be read): what tells a cache or a resumed
    job that the file changed, without reading its bytes."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def require_finite(x: np.ndarray, what: str) -> None:
    """A DataError naming where the first NaN/inf of a feature matrix is and how many rows have one."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0]
        rows = int(bad.reshape(len(x), -1).any(axis=1).sum()) if x.ndim > 1 else int(bad.sum())
        at = f"row {first[0]}, column {first[1]}" if x.ndim > 1 else f"row {first[0]}"
        raise DataError(f"{what} contain NaN/inf ({rows} of {len(x)} rows; the first at {at})")


def damage(path: str, e: Exception) -> str:
    """Why a record file is unusable, without the `path: ` prefix `read_json` put first (the caller
    names the path once): 'cannot read JSON (...)', "no 'settings' entry", 'not a list'."""
    if isinstance(e, KeyError):
        return f"no {e} entry"
    text = str(e)
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def write_pickle(path: str, obj: Any, protocol: int = 2) -> None:
    with atomic_open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def probe_lock(path: str, shared: bool = False) -> Optional[tuple]:
    """(held by another process, the file's text) of a `flock` lock file, or None when it cannot be
    opened. A free lock is taken for an instant only; the kernel releases a holder's lock when the
    holder dies, so a free lock means no live process holds the file."""
    try:
        f = open(path)
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            return True, f.read().strip()
        return False, f.read().strip()
