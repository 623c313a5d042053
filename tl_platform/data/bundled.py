"""The embedded default data: three domains of review sentences (UCI, CC BY 4.0; see bundled/ATTRIBUTION.md)."""

from __future__ import annotations

from pathlib import Path

from tl_platform.data.schema import DatasetSource, LabelSchema

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
SENTIMENT_SCHEMA = LabelSchema(labels=("0", "1"), names=("negative", "positive"))
BUNDLED_DOMAINS: dict[str, str] = {
    "amazon": "amazon_cells_labelled.txt",
    "yelp": "yelp_labelled.txt",
    "imdb": "imdb_labelled.txt",
}


def bundled_source(domain: str) -> DatasetSource:
    """The source of one bundled domain: header-less TSV of ``sentence<TAB>label``."""
    if domain not in BUNDLED_DOMAINS:
        raise ValueError(f"unknown bundled domain {domain!r}; choose one of {sorted(BUNDLED_DOMAINS)}")
    return DatasetSource(
        path=str(BUNDLED_DIR / BUNDLED_DOMAINS[domain]),
        schema=SENTIMENT_SCHEMA,
        format="tsv",
        header=False,
        column_names=("text", "label"),
    )
