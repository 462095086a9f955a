"""The inventory App: serve it with ``tether serve examples.inventory.app:app``.

It also declares one job type, ``checksum``: run its jobs with
``tether worker examples.inventory.app:app``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, Field

import tether
from examples.inventory.implementation import DEVICES_CSV, InventoryService, load_devices
from tether.jobs import JobCancelled, JobContext


class ChecksumParameters(BaseModel):
    """Files to hash, as paths on the worker (relative to its working directory)."""

    paths: list[str] = Field(min_length=1, max_length=1000)
    chunk_size: int = Field(1 << 20, ge=4096, le=64 << 20, description="bytes read at a time")


class FileChecksum(BaseModel):
    """One file's digest."""

    path: str
    size: int = Field(description="bytes")
    sha256: str


class ChecksumResult(BaseModel):
    """The digests, in the order the paths were given."""

    files: list[FileChecksum]
    total_bytes: int


class MissingFile(tether.ServiceError):
    """A path names no readable regular file (the job fails without a retry)."""

    code = tether.StatusCode.NOT_FOUND


def checksum(parameters: ChecksumParameters, ctx: JobContext) -> ChecksumResult:
    """SHA-256 and size (bytes) of each file, reporting progress by bytes read."""
    files = [Path(p) for p in parameters.paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise MissingFile(f"no such file: {', '.join(missing)}", {"paths": missing})
    total = sum(f.stat().st_size for f in files) or 1
    done = 0
    found: list[FileChecksum] = []
    for path in files:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as stream:
            while chunk := stream.read(parameters.chunk_size):
                if ctx.cancelled:
                    raise JobCancelled(f"stopped at {path}")
                digest.update(chunk)
                size += len(chunk)
                done += len(chunk)
                ctx.progress(min(done / total, 1.0), f"hashing {path}")
        found.append(FileChecksum(path=str(path), size=size, sha256=digest.hexdigest()))
    return ChecksumResult(files=found, total_bytes=sum(f.size for f in found))


def create_app(devices_csv: Path = DEVICES_CSV) -> tether.App:
    """The inventory App, its devices loaded from ``devices_csv``, with the
    ``devices_file`` readiness check and the ``checksum`` job type."""
    inventory = InventoryService.from_csv(devices_csv)
    application = tether.App(inventory, title="Inventory")

    @application.health_check("devices_file", timeout=1.0, services=["inventory"])
    def devices_file() -> bool:
        """Ready while the devices file still reads as at least one device: it is
        what the inventory was loaded from, and what a restart loads."""
        return bool(load_devices(devices_csv))

    application.job("checksum", timeout=300.0, max_attempts=3, backoff=1.0)(checksum)
    return application


app = create_app()
