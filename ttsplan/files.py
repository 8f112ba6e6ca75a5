"""Atomic writes: a file appears complete or not at all, so an interrupted job leaves nothing half-written."""
import hashlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside path, sync it, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temps(folder: Path) -> None:
    """Temporary files a killed writer left behind (write_atomic names them .NAME.tmp)."""
    if Path(folder).is_dir():
        for tmp in Path(folder).rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
