"""The reference profile: bins from quantiles (ties, constants, open ends), counts, quantiles, bounded samples,
category counts, the projection sample, deterministic JSON and its round trip, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tl_platform.monitoring.reference import (
    PROFILE_FILE,
    QUANTILE_LEVELS,
    ReferenceConfig,
    ReferenceProfile,
    bin_counts,
    bin_edges,
    build_reference,
    category_counts,
)


def input_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    chars = np.maximum(1, rng.lognormal(4.3, 0.6, n).round())
    return pd.DataFrame({
        "text_chars": chars.astype(int),
        "token_count": np.maximum(1, (chars / 4.5).round()).astype(int),
        "unknown_share": np.where(rng.random(n) < 0.8, 0.0, rng.beta(1, 20, n)),
        "truncated": chars > 200,
    })


def model_frame(n: int, components: int = 3, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "confidence": 1 - rng.beta(1, 6, n) / 2,
        "label": rng.choice(["negative", "positive"], n, p=[0.4, 0.6]),
    })
    for i in range(components):
        frame[f"projection_{i}"] = rng.normal(size=n)
    return frame


class TestBinEdges:
    def test_deciles_of_a_continuous_feature_give_ten_nearly_equal_bins(self) -> None:
        values = np.random.default_rng(0).normal(size=10_000)
        edges = bin_edges(values, 10)
        counts = bin_counts(edges, values)
        assert len(edges) == 9 and counts.sum() == 10_000
        assert counts.min() >= 999 and counts.max() <= 1001

    def test_ties_merge_edges_and_no_reference_bin_is_empty(self) -> None:
        values = np.concatenate([np.zeros(800), np.linspace(0.01, 0.2, 200)])  # unknown_share: mostly 0
        edges = bin_edges(values, 10)
        counts = bin_counts(edges, values)
        assert edges[0] == 0.0 and len(edges) == 2  # the 10%..80% quantiles are all 0; 90% is the one above
        assert counts.tolist() == [800, 100, 100]

    def test_mass_at_the_maximum_drops_the_edge_that_would_leave_the_last_bin_empty(self) -> None:
        values = np.concatenate([np.linspace(0.5, 0.9, 300), np.ones(700)])
        edges = bin_edges(values, 10)
        assert max(edges) < 1.0 and (bin_counts(edges, values) > 0).all()

    def test_a_constant_feature_keeps_below_at_and_above(self) -> None:
        edges = bin_edges(np.full(50, 3.0), 10)
        assert edges == (float(np.nextafter(3.0, -np.inf)), 3.0)
        assert bin_counts(edges, np.array([2.0, 3.0, 3.0, 4.0])).tolist() == [1, 2, 1]

    def test_every_current_value_falls_in_a_bin(self) -> None:
        edges = bin_edges(np.arange(100.0), 4)
        counts = bin_counts(edges, np.array([-1e300, 0.0, 24.0, 25.0, 99.0, 1e300]))
        assert counts.sum() == 6 and counts[0] == 3 and counts[-1] == 2  # right-closed: 24 lies in (-inf, 24]


class TestBuildReference:
    profile = build_reference(input_frame(3000), model_frame(1200), ReferenceConfig(sample_size=1000, projection_sample_size=500))

    def test_features_sources_and_bins(self) -> None:
        p = self.profile
        assert p.numeric_features == ("text_chars", "token_count", "unknown_share", "confidence",
                                      "projection_0", "projection_1", "projection_2")
        assert p.categorical_features == ("truncated", "label")
        assert [f.source for f in p.numeric] == ["input"] * 3 + ["model"] * 4
        text = p.numeric_feature("text_chars")
        assert sum(text.counts) == text.rows == 3000 and len(text.counts) == len(text.edges) + 1 == 10
        assert min(text.counts) > 0
        assert p.numeric_feature("unknown_share").edges[0] == 0.0

    def test_quantiles_and_moments_are_the_reference_values(self) -> None:
        values = input_frame(3000)["text_chars"].to_numpy(dtype=float)
        text = self.profile.numeric_feature("text_chars")
        assert text.quantiles == tuple(np.quantile(values, QUANTILE_LEVELS))
        assert (text.mean, text.minimum, text.maximum) == (values.mean(), values.min(), values.max())

    def test_samples_are_bounded_and_drawn_from_the_frames(self) -> None:
        text = self.profile.numeric_feature("text_chars")
        confidence = self.profile.numeric_feature("confidence")
        assert len(text.sample) == 1000 and len(confidence.sample) == 1000
        assert set(text.sample) <= set(input_frame(3000)["text_chars"].astype(float))
        assert len(self.profile.projection_sample) == 500 and len(self.profile.projection_sample[0]) == 3
        assert self.profile.projection_array().shape == (500, 3)

    def test_categories_are_counted_and_booleans_named(self) -> None:
        truncated = self.profile.categorical_feature("truncated")
        expected_true = int((input_frame(3000)["text_chars"] > 200).sum())
        assert truncated.counts == {"false": 3000 - expected_true, "true": expected_true}
        label = self.profile.categorical_feature("label")
        assert sum(label.counts.values()) == 1200 and list(label.counts) == ["negative", "positive"]
        assert set(label.sample) == {"negative", "positive"} and len(label.sample) == 1000

    def test_missing_values_are_counted_and_left_out(self) -> None:
        model = model_frame(400)
        model.loc[:49, "confidence"] = np.nan
        model.loc[:9, "label"] = None
        model.loc[:4, "projection_1"] = np.nan
        profile = build_reference(input_frame(400), model)
        confidence, label = profile.numeric_feature("confidence"), profile.categorical_feature("label")
        assert (confidence.rows, confidence.missing, sum(confidence.counts)) == (350, 50, 350)
        assert (label.rows, label.missing) == (390, 10)
        assert len(profile.projection_sample) == 395  # rows with a complete projection

    def test_the_same_input_gives_the_same_bytes_and_a_new_seed_another_sample(self) -> None:
        again = build_reference(input_frame(3000), model_frame(1200), ReferenceConfig(sample_size=1000, projection_sample_size=500))
        assert again.dumps() == self.profile.dumps()
        other = build_reference(input_frame(3000), model_frame(1200), ReferenceConfig(sample_size=1000, projection_sample_size=500, seed=1))
        assert other.numeric_feature("text_chars").sample != self.profile.numeric_feature("text_chars").sample
        assert other.numeric_feature("text_chars").counts == self.profile.numeric_feature("text_chars").counts

    def test_save_and_load_round_trip(self, tmp_path: Path) -> None:
        path = self.profile.save(tmp_path / "reference")
        assert path == tmp_path / "reference" / PROFILE_FILE
        text = path.read_text()
        assert '"format_version":1' in text and "NaN" not in text
        assert ReferenceProfile.load(tmp_path / "reference") == self.profile

    def test_sample_frame_pads_the_shorter_source(self) -> None:
        profile = build_reference(input_frame(3000), model_frame(300), ReferenceConfig(sample_size=1000))
        frame = profile.sample_frame()
        assert list(frame.columns) == [*profile.numeric_features, *profile.categorical_features]
        assert len(frame) == 1000
        assert frame["text_chars"].notna().sum() == 1000 and frame["confidence"].notna().sum() == 300
        assert frame["label"].notna().sum() == 300 and frame["truncated"].dtype == object


class TestBadInputs:
    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("bins", 1, r"bins must be an integer in \[2, 100\], got 1"),
            ("bins", 10.0, r"bins must be an integer in \[2, 100\], got 10.0"),
            ("sample_size", 50, r"sample_size must be an integer in \[100, 100000\], got 50"),
            ("projection_sample_size", 20_000, r"projection_sample_size must be an integer in \[50, 10000\], got 20000"),
            ("seed", -1, r"seed must be an integer in \[0, 4294967295\], got -1"),
        ],
    )
    def test_config(self, field: str, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            ReferenceConfig(**{field: value})  # type: ignore[arg-type]

    def test_missing_columns_are_named(self) -> None:
        with pytest.raises(ValueError, match=r"input_frame: missing columns \['unknown_share'\]"):
            build_reference(input_frame(100).drop(columns="unknown_share"), model_frame(100))
        with pytest.raises(ValueError, match=r"model_frame: missing columns \['label'\]"):
            build_reference(input_frame(100), model_frame(100).drop(columns="label"))

    def test_projection_columns_must_be_contiguous(self) -> None:
        with pytest.raises(ValueError, match=r"projection_0 .. projection_\(K-1\) with K in 1..8, got \['projection_0', 'projection_2'\]"):
            build_reference(input_frame(100), model_frame(100).drop(columns="projection_1"))
        with pytest.raises(ValueError, match=r"with K in 1..8, got \[\]"):
            build_reference(input_frame(100), model_frame(100, components=0))

    def test_a_feature_without_values_or_frames_without_rows(self) -> None:
        frame = input_frame(100)
        frame["unknown_share"] = np.nan
        with pytest.raises(ValueError, match=r"input_frame\['unknown_share'\]: no finite values"):
            build_reference(frame, model_frame(100))
        model = model_frame(100)
        model["label"] = None
        with pytest.raises(ValueError, match=r"model_frame\['label'\]: every value is missing"):
            build_reference(input_frame(100), model)
        with pytest.raises(ValueError, match="input_frame: no rows"):
            build_reference(input_frame(0), model_frame(100))

    def test_loading(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"no reference profile at .*profile\.json; the bundle was exported without one"):
            ReferenceProfile.load(tmp_path)
        data = build_reference(input_frame(200), model_frame(200)).to_json()
        with pytest.raises(ValueError, match="format_version: this code reads reference profiles of version 1, got 2"):
            ReferenceProfile.from_json({**data, "format_version": 2})
        broken = {**data, "numeric": [{**data["numeric"][0], "counts": [1, 2]}]}
        with pytest.raises(ValueError, match="numeric feature 'text_chars': 9 edges need 10 counts, got 2"):
            ReferenceProfile.from_json(broken)
        with pytest.raises(KeyError, match="no numeric feature 'lenght' in the reference"):
            build_reference(input_frame(200), model_frame(200)).numeric_feature("lenght")


def test_category_counts_merge_booleans_with_their_names_and_count_missing() -> None:
    counts, missing = category_counts(np.array([True, "true", False, None, np.nan, "x"], dtype=object))
    assert counts == {"false": 1, "true": 2, "x": 1} and missing == 2
