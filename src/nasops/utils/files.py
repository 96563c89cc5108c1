"""The one way nasops writes files: whole, or not at all.

Every file goes to a temporary file beside the target (``<path>.<random>.tmp``: two writers never
share one), is flushed to disk and is renamed over the target only once complete (``os.replace``
is atomic on POSIX and Windows). So a killed process, a full disk or a failing writer leaves
either the old file or the new one, never a part of one; the temporary file is removed on
failure, and a failing disk's OSError names the target ("could not write PATH: No space left on
device"), which every command prints as its one-line error. (After a power loss the rename itself may be lost, as the directory is not synced:
then the old file is there.) ::

    write_text(path, text)          # str
    write_json(path, doc)           # JSON, indented
    write_files({path: data, ...})  # files (bytes or str): a failed write changes none
    write_files({path: serialised(torch.save, obj)})   # torch's writers: to memory first
    with atomic_open(path, "wb") as f: ...      # a file object (np.savez, pickled bytes)
    with atomic_path(path) as tmp: ...          # a path, for writers that want one (savefig)
    log = open_log(path); append_line(log, line)   # logs (metrics.jsonl): whole lines

A log is the one kind of file appended to instead of replaced: rewriting it whole at every step
would cost the square of its length. Each line goes straight to the file, unbuffered; reopening
the log cuts off a torn last line, and ``read_lines`` leaves one out.

The writer of TensorBoard's event files is TensorBoard's own and stays outside this module.
A test greps the package for any other writer.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid


def _tmp(path: str) -> str:
    return f"{path}.{uuid.uuid4().hex[:12]}.tmp"


_TMP_NAME = re.compile(r".+\.[0-9a-f]{12}\.tmp")


def remove_stale_tmp(folder: str | os.PathLike) -> list[str]:
    """Removes the temporary files a killed writer left in `folder` (a SIGKILL or a power loss
    gives atomic_path no chance to); returns their names. Call it only where no other process
    is writing."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(n for n in os.listdir(folder) if _TMP_NAME.fullmatch(n))
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    return stale


def _sync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; when the block ends without an exception, the
    file written there replaces `path`. On an exception, the temporary file is removed and
    `path` is untouched."""
    path = os.fspath(path)
    tmp = _tmp(path)
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        _raise_naming(e, path, tmp)
        raise


def _raise_naming(error: BaseException, path: str, tmp: str) -> None:
    """A full disk or a missing folder: raises the OSError again naming the file the user
    knows, not the temporary one."""
    if isinstance(error, OSError) and error.filename in (None, tmp):
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Like ``open(path, mode)`` for writing ("w" or "wb"), but the file replaces `path` only
    when the block ends without an exception (see :func:`atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode = {mode!r} is not allowed; allowed: ['w', 'wb']")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_files(contents: dict) -> None:
    """Writes several files as one, in the order given: each to its temporary file (synced)
    first, then all renamed over their targets. A write that fails (a full disk) leaves every
    target as it was. `contents`: {path: bytes or str}."""
    staged = []
    try:
        for path, data in contents.items():
            path = os.fspath(path)
            staged.append((_tmp(path), path))
            try:
                with open(staged[-1][0], "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
                _sync(staged[-1][0])
            except OSError as e:
                _raise_naming(e, path, staged[-1][0])
                raise
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise


def serialised(save, obj) -> bytes:
    """The bytes `save(obj, file)` writes (torch.save, torch.jit.save, torch.export.save), made
    in memory: on a full disk torch's own file writers raise a RuntimeError that names no file,
    and torch.jit.save and torch.export.save then abort the process (torch 2.13, measured on
    a full tmpfs: the zip writer's destructor throws). Write the bytes with this module."""
    buffer = io.BytesIO()
    save(obj, buffer)
    return buffer.getvalue()


def write_json(path: str | os.PathLike, doc, indent: int | None = 2) -> None:
    """Writes `doc` as JSON to `path` atomically (serialised first: a value JSON cannot hold
    raises before anything is written)."""
    write_text(path, json.dumps(doc, indent=indent))


def open_log(path: str | os.PathLike, size: int | None = None):
    """Opens a log for :func:`append_line`, cutting off a torn last line first (one a run
    killed mid-write left without its newline, which the next line would otherwise join), and
    with `size`, everything after its first `size` bytes (what a resumed run logs again)."""
    if os.path.exists(path):
        with open(path, "rb+") as f:
            data = f.read() if size is None else f.read(size)
            end = data.rfind(b"\n") + 1
            if end != os.fstat(f.fileno()).st_size:
                f.truncate(end)
    # unbuffered: a line that met a full disk is not held in a buffer, to fail again on close
    return open(path, "ab", buffering=0)


def append_line(log, line: str) -> None:
    """Appends one line (a newline is added) to a log opened by :func:`open_log`, straight to
    the file. A full disk raises an OSError naming the log (a part of the line may be there,
    which open_log cuts off)."""
    if "\n" in line:
        raise ValueError("append_line writes one line: the text holds a newline")
    data = memoryview((line + "\n").encode())
    try:
        while data:
            data = data[log.write(data):]  # (a full disk may take a part, then refuse)
    except OSError as e:
        raise OSError(e.errno, f"could not write {log.name}: {e.strerror or e}") from e


def read_lines(path: str | os.PathLike) -> list[str]:
    """The complete lines of a log (a torn last line is left out)."""
    with open(path) as f:
        text = f.read()
    return text.split("\n")[:-1]


def names_a_file(name_or_path) -> bool:
    """Whether a "packaged name or YAML path" argument is a path: it holds a path separator or
    ends in .yaml / .yml (a packaged name is a bare word)."""
    text = os.fspath(name_or_path)
    return os.sep in text or text.endswith((".yaml", ".yml"))


def one_line(error) -> str:
    """An error's text on one line (YAML's and some libraries' messages run over several)."""
    return " ".join(str(error).split())


def read_yaml_text(text: str, source: str, kind: str):
    """yaml.safe_load of `text` read from `source`: ValueError "SOURCE is not valid YAML: ..."
    on one line, or "SOURCE is empty" when it holds no document."""
    import yaml  # (late, like torch below)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{source} is not valid YAML: {one_line(e)}") from None
    if doc is None:
        raise ValueError(f"{source} is empty: a {kind} holds a mapping of keys")
    return doc


def read_text(path: str, kind: str) -> str:
    """The text of a UTF-8 file: FileNotFoundError "KIND 'PATH' does not exist", or ValueError
    "PATH is not a KIND: ..." when its bytes are not UTF-8 text (a binary file, a damaged one)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a {kind}: byte {e.start} is not UTF-8 text "
                         f"(a binary or damaged file)") from None


def read_json(path: str, kind: str):
    """The document of a JSON file: FileNotFoundError / ValueError naming the file (see
    :func:`read_text`), "PATH is not a KIND: ..." for text that is not JSON."""
    text = read_text(path, kind)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a {kind}: {e}") from None


def load_tensors(path: str, kind: str):
    """torch.load of a file of tensors and plain containers (weights_only=True, onto the CPU):
    FileNotFoundError "KIND 'PATH' does not exist", or ValueError "PATH is not a readable KIND"
    for a truncated or foreign file."""
    import torch  # (late: most users of this module write files and need no torch)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} {path!r} does not exist")
    _check_zip_records(path, kind)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = str(e).strip().split("\n")[0]  # (weights_only's refusals run to paragraphs)
        raise ValueError(f"{path} is not a readable {kind}: {type(e).__name__}: {first}") from None


def _check_zip_records(path: str, kind: str) -> None:
    """torch.save's files are zip archives whose records carry CRC-32s, which torch.load does
    not check: a flipped bit in a tensor would load as another number. ValueError naming the
    record that fails. (Legacy, non-zip files have none to check.)"""
    import zipfile
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise ValueError(f"{path} is not a readable {kind}: {one_line(e)}") from None
    if bad is not None:
        raise ValueError(f"{path} is damaged: its record {bad!r} fails its CRC-32 check (a "
                         f"changed bit on disk or in a copy)")
