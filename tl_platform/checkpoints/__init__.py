"""Reproducibility bundles: every checkpoint carries its weights, tokenizer, schema, data hashes and config."""

from tl_platform.checkpoints.bundle import (
    BundleError,
    BundleManifest,
    load_bundle,
    seal_bundle,
    verify_bundle,
    write_bundle,
)
from tl_platform.checkpoints.provenance import Provenance, capture_provenance

__all__ = [
    "BundleError",
    "BundleManifest",
    "Provenance",
    "capture_provenance",
    "load_bundle",
    "seal_bundle",
    "verify_bundle",
    "write_bundle",
]
