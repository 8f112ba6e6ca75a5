"""Files on disk: atomic writes (a file appears complete or not at all, so an interrupted job leaves
nothing half-written), checksums, and reading ttsplan's YAML files (profiles, plans) with one error
per problem that names the file and the field."""
import hashlib
import os
from pathlib import Path

import yaml

from ttsplan.errors import TTSPlanError


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


def read_yaml(path: Path, what: str):
    """A YAML file's data, or one line naming the file: missing, unreadable, or not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise TTSPlanError(f"{path}: no such {what}")
    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as e:
        raise TTSPlanError(f"{path}: cannot read the {what} ({e.strerror})") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise TTSPlanError(f"{path}: not valid YAML{where} (truncated or corrupt?)") from e


def check_schema(data, path: Path, schema: str, what: str) -> None:
    """The file's 'schema' field names the expected schema."""
    if not isinstance(data, dict) or "schema" not in data:
        raise TTSPlanError(f"{path}: field 'schema' is missing: not a ttsplan {what}")
    if data["schema"] != schema:
        raise TTSPlanError(f"{path}: field 'schema' is {data['schema']!r}, expected {schema!r}")
