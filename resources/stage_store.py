"""Where stage outputs live, and how a run finds the upstream output its own lineage names.

Every output is written once under ``<root>/<asset key>/<partition>/<run id>/`` and its location is recorded
in the materialisation's metadata (``stage_output``). A downstream step never guesses a path: it looks up the
upstream materialisation (``resources.lineage``) and reads the location that materialisation recorded. The
root is a local directory, or any fsspec URL (``s3://bucket/prefix`` for S3-compatible storage with s3fs
installed): then a stage writes into a local staging directory that is uploaded when the stage succeeds, and
an upstream output is downloaded once into a local cache, keyed by the run that made it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import fsspec
from fsspec.implementations.local import LocalFileSystem

from resources.lineage import UpstreamMaterialisation, find_upstream_materialisation

OUTPUT_METADATA_KEY = "stage_output"
LINEAGE_METADATA_KEY = "upstream_versions"  # what a step read, one entry per upstream asset
UNPARTITIONED = "_unpartitioned"
_COMPLETE_SUFFIX = ".complete"  # beside a downloaded copy, so a half-finished download is never read


class StageOutputError(RuntimeError):
    """An upstream output cannot be read: never materialised, recorded without a location, or gone."""


class StageStore(dg.ConfigurableResource):
    """Outputs by asset key, partition and run, on a local directory or an fsspec URL.

    ``cache_dir`` holds local staging and downloaded copies when ``root`` is remote; unused for a local root.
    """

    root: str
    cache_dir: str | None = None

    # -- writing -------------------------------------------------------------------------------------------

    def output_dir(self, context: dg.AssetExecutionContext) -> Path:
        """A fresh local directory for this step's output (a retried step starts clean)."""
        relative = _relative_location(context.asset_key, _partition(context), context.run_id)
        path = Path(self._root_path()) / relative if self._is_local() else self._cache() / "staging" / relative
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def save(self, context: dg.AssetExecutionContext, local: Path) -> dict[str, Any]:
        """Put the step's output in place (an upload when remote); the metadata that records where it is."""
        relative = _relative_location(context.asset_key, _partition(context), context.run_id)
        if self._is_local():
            location = str(Path(self._root_path()) / relative)
            if Path(local).resolve() != Path(location).resolve():
                raise StageOutputError(f"{local} is not this step's output directory {location}; use output_dir()")
            return {OUTPUT_METADATA_KEY: dg.MetadataValue.path(location)}
        location = f"{self.root.rstrip('/')}/{relative}"
        filesystem, remote = fsspec.core.url_to_fs(location)
        if filesystem.exists(remote):
            filesystem.rm(remote, recursive=True)  # a retried step: replace the earlier attempt's upload
        filesystem.put(str(local).rstrip("/") + "/", remote, recursive=True)
        return {OUTPUT_METADATA_KEY: dg.MetadataValue.url(location)}

    def pass_through(self, upstream: UpstreamOutput) -> dict[str, Any]:
        """Metadata for a stage whose output is its upstream's, unchanged (a disabled stage)."""
        value = upstream.location
        entry = dg.MetadataValue.path(value) if self._is_local() else dg.MetadataValue.url(value)
        return {OUTPUT_METADATA_KEY: entry}

    # -- reading -------------------------------------------------------------------------------------------

    def upstream(self, context: dg.AssetExecutionContext, key: str) -> UpstreamOutput:
        """The output of upstream asset ``key`` that this run's lineage names, as a local directory."""
        found = find_upstream_materialisation(context, dg.AssetKey.from_user_string(key))
        if found is None:
            raise StageOutputError(f"{key} has never been materialised; materialise {key} first")
        output = self.open(found)
        context.log.info(f"reading {key} from {output.location} ({found.how}, run {found.run_id})")
        return output

    def open(self, found: UpstreamMaterialisation) -> UpstreamOutput:
        """The output a materialisation recorded, as a local directory (a cached download when remote)."""
        entry = found.metadata.get(OUTPUT_METADATA_KEY)
        if entry is None:
            raise StageOutputError(
                f"{found.asset_key}'s materialisation in run {found.run_id} recorded no {OUTPUT_METADATA_KEY} (it "
                f"was made before outputs were recorded by location); re-materialise {found.asset_key}"
            )
        location = str(entry.value)
        return UpstreamOutput(found, location, self._local_copy(found, location))

    def _local_copy(self, found: UpstreamMaterialisation, location: str) -> Path:
        filesystem, remote = fsspec.core.url_to_fs(location)
        if isinstance(filesystem, LocalFileSystem):
            path = Path(remote)
            if not path.is_dir():
                raise StageOutputError(
                    f"{found.asset_key}'s output {path} (run {found.run_id}) no longer exists; re-materialise it"
                )
            return path
        copy = self._cache() / "downloads" / _relative_location(found.asset_key, found.partition, found.run_id)
        marker = copy.with_name(copy.name + _COMPLETE_SUFFIX)
        if not marker.exists():
            if not filesystem.exists(remote):
                raise StageOutputError(f"{found.asset_key}'s output {location} (run {found.run_id}) is gone")
            if copy.exists():
                shutil.rmtree(copy)  # an interrupted download
            copy.parent.mkdir(parents=True, exist_ok=True)
            filesystem.get(remote.rstrip("/") + "/", str(copy), recursive=True)
            marker.touch()
        return copy

    # -- where -----------------------------------------------------------------------------------------------

    def _is_local(self) -> bool:
        filesystem, _ = fsspec.core.url_to_fs(self.root)
        return isinstance(filesystem, LocalFileSystem)

    def _root_path(self) -> str:
        return str(fsspec.core.url_to_fs(self.root)[1])

    def cache_path(self) -> Path:
        """Where copies fetched from elsewhere (a registry's artifacts) are kept: ``cache_dir``, or ``<root>/_cache``."""
        if self.cache_dir:
            return Path(self.cache_dir)
        if self._is_local():
            return Path(self._root_path()) / "_cache"
        raise StageOutputError(f"StageStore.cache_dir is required when root is remote ({self.root})")

    def _cache(self) -> Path:
        if not self.cache_dir:
            raise StageOutputError(f"StageStore.cache_dir is required when root is remote ({self.root})")
        return Path(self.cache_dir)


@dataclass(frozen=True)
class UpstreamOutput:
    """An upstream output as read: which materialisation (run, data version), where it lives, its local path."""

    materialisation: UpstreamMaterialisation
    location: str
    path: Path

    def lineage(self) -> dict[str, object]:
        found = self.materialisation
        return {
            "run_id": found.run_id,
            "storage_id": found.storage_id,
            "data_version": found.data_version,
            "partition": found.partition,
            "how": found.how,
            "location": self.location,
        }


def lineage_metadata(*upstreams: UpstreamOutput) -> dict[str, Any]:
    """The versions a step read, shown on its materialisation: one entry per upstream asset."""
    return {LINEAGE_METADATA_KEY: dg.MetadataValue.json({u.materialisation.asset_key: u.lineage() for u in upstreams})}


def _partition(context: dg.AssetExecutionContext) -> str | None:
    return context.partition_key if context.has_partition_key else None


def _relative_location(asset_key: dg.AssetKey | str, partition: str | None, run_id: str) -> str:
    key = asset_key if isinstance(asset_key, dg.AssetKey) else dg.AssetKey.from_user_string(asset_key)
    # a partition key may hold any character; quoted, it stays one path segment
    segment = quote(partition, safe="-_.") if partition is not None else UNPARTITIONED
    return "/".join([*key.path, segment, run_id])
