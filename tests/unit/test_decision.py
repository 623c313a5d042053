"""The decision tree: every branch reached from inputs measured on small fixtures, and the measurements themselves.

The embedder here is a hashed bag of words (deterministic, no model): the distance code under test is the real
one. With it the bundled review domains measure about 1.0 against each other and the clinical notes about 5.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from tl_platform.data.bundled import SENTIMENT_SCHEMA, bundled_source
from tl_platform.data.loading import load_labelled_text
from tl_platform.economics.decision import (
    PlanInputs,
    PlanSettings,
    Recipe,
    TransferPlan,
    configured_recipe,
    decide,
    measure_plan_inputs,
    plan_transfer,
    run_config_for,
)
from tl_platform.economics.measurements import (
    DEFAULT_FAR_THRESHOLD,
    bundled_reference_texts,
    centroid_cosine_distance,
    count_labels,
    measure_domain_distance,
    sample_texts,
)

# Written for these tests (no third-party text): clinical notes, a domain far from everyday English reviews.
CLINICAL_NOTES = (
    "Patient admitted with acute exacerbation of congestive heart failure, started on intravenous furosemide.",
    "Troponin negative twice, electrocardiogram shows sinus rhythm without acute ischaemic changes.",
    "Serum creatinine rose overnight; nephrology consulted for acute kidney injury workup.",
    "Denies chest pain; dyspnoea on exertion improved after diuresis.",
    "Chest radiograph shows bilateral pleural effusions, left greater than right, without consolidation.",
    "Haemoglobin low at admission, transfused one unit of packed red cells, repeat count in the morning.",
    "Continue metoprolol twice daily; hold lisinopril given rising creatinine.",
    "Afebrile overnight, white cell count trending down, blood cultures without growth at forty eight hours.",
    "Glycated haemoglobin elevated; insulin glargine titrated with a sliding scale.",
    "Magnetic resonance imaging of the brain shows no acute infarct and chronic small vessel changes.",
    "Discharged home on apixaban with cardiology follow up in two weeks.",
    "Pain controlled with paracetamol as required, mobilising with physiotherapy.",
    "Wound inspected, no erythema or discharge, sutures to be removed on day ten.",
    "Potassium replaced orally, magnesium within reference range, recheck electrolytes tomorrow.",
    "Oxygen saturation stable on two litres via nasal cannula, wean as tolerated.",
    "Sodium low on admission, fluid restriction commenced, urine osmolality sent.",
    "Echocardiogram shows reduced ejection fraction with global hypokinesis.",
    "Anticoagulation held before the procedure, bridging not required per haematology.",
    "Lumbar puncture performed under aseptic technique, opening pressure normal.",
    "Abdominal ultrasound demonstrates gallstones without ductal dilatation.",
    "Sepsis screen positive, broad spectrum antibiotics started after cultures drawn.",
    "Renal function improving with intravenous fluids, urine output adequate.",
    "Neurological observations stable, pupils equal and reactive, no focal deficit.",
    "Thyroid function tests normal, cortisol pending, endocrinology aware.",
    "Spirometry shows obstructive pattern, inhaled corticosteroid dose increased.",
    "Plan for colonoscopy next week, bowel preparation prescribed.",
    "Mild hepatic transaminase elevation, statin paused, repeat liver panel in a week.",
    "Fall risk assessment completed, bed alarm in place, family updated.",
    "Peripheral oedema reduced, weight down two kilograms since admission.",
    "Dressing changed daily, pressure area care, dietitian review requested.",
)
CLINICAL_LABELS = tuple(i % 2 for i in range(len(CLINICAL_NOTES)))  # 15 a class


def bag_of_words(texts: Sequence[str], dim: int = 512) -> np.ndarray:
    """Hashed word counts, L2-normalised: a deterministic embedder for tests."""
    vectors = np.zeros((len(texts), dim))
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            vectors[row, zlib.crc32(word.encode()) % dim] += 1
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[str, ...]]:
    return bundled_reference_texts()


@pytest.fixture(scope="module")
def amazon() -> tuple[tuple[str, ...], tuple[int, ...]]:
    dataset = load_labelled_text(bundled_source("amazon"))
    return dataset.texts, dataset.labels


def few_per_class(texts: Sequence[str], labels: Sequence[int], n: int) -> tuple[list[str], list[int]]:
    kept_texts, kept_labels, seen = [], [], {0: 0, 1: 0}
    for text, label in zip(texts, labels, strict=True):
        if seen[label] < n:
            seen[label] += 1
            kept_texts.append(text)
            kept_labels.append(label)
    return kept_texts, kept_labels


def make_plan(texts, labels, references, settings: PlanSettings, unlabelled: int | None = None, pretrained: bool = True) -> TransferPlan:
    return plan_transfer(
        texts=texts,
        labels=labels,
        class_names=SENTIMENT_SCHEMA.names,
        unlabelled_texts=len(texts) if unlabelled is None else unlabelled,
        references=references,
        embed=bag_of_words if pretrained else None,
        pretrained_model="test encoder" if pretrained else None,
        settings=settings,
    )


API_ALLOWED = {"latency_sla_ms": 2000.0, "daily_requests": 1000.0}  # API p95 1500 ms fits; far below the crossover


class TestBranches:
    def test_no_pretrained_model_means_from_scratch_with_no_run_config(self, amazon, references) -> None:
        plan = make_plan(*amazon, references, PlanSettings(), pretrained=False)
        assert plan.recommended == Recipe("from_scratch")
        assert plan.runner_up == Recipe("prompting")
        assert plan.inputs.domain is None
        assert run_config_for(plan) is None and configured_recipe(plan) is None
        assert "no pretrained model exists for the modality" in plan.reasons[0]

    def test_few_labels_and_an_api_that_fits_means_prompting_benchmarked_against_lora(self, amazon, references) -> None:
        texts, labels = few_per_class(*amazon, 30)
        plan = make_plan(texts, labels, references, PlanSettings(**API_ALLOWED))
        assert plan.inputs.labels.per_class == {"negative": 30, "positive": 30}
        assert (plan.recommended, plan.runner_up) == (Recipe("prompting"), Recipe("lora"))
        assert "30 labelled examples (< 100)" in plan.reasons[0]
        # the main job trains the runner-up, the benchmark
        assert run_config_for(plan) == {
            "ops": {"domain_adapted_model": {"config": {"enabled": False}}, "task_model": {"config": {"method": "lora"}}}
        }

    def test_a_handful_of_examples_still_gets_a_plan_without_a_distance(self, amazon, references) -> None:
        texts, labels = few_per_class(*amazon, 5)
        plan = make_plan(texts, labels, references, PlanSettings(**API_ALLOWED))
        assert plan.inputs.domain is None and plan.inputs.labels.total == 10
        assert plan.recommended == Recipe("prompting")

    def test_few_labels_with_an_sla_the_api_misses_means_lora(self, amazon, references) -> None:
        texts, labels = few_per_class(*amazon, 30)
        plan = make_plan(texts, labels, references, PlanSettings(latency_sla_ms=500.0, daily_requests=1000.0))
        assert not plan.inputs.api_fits_latency
        assert (plan.recommended, plan.runner_up) == (Recipe("lora"), Recipe("prompting"))
        assert "exceeds the 500 ms SLA" in plan.reasons[1]

    def test_few_labels_above_the_crossover_volume_means_lora(self, amazon, references) -> None:
        texts, labels = few_per_class(*amazon, 30)
        plan = make_plan(texts, labels, references, PlanSettings(latency_sla_ms=2000.0, daily_requests=1e6))
        assert plan.inputs.api_fits_latency and not plan.inputs.api_cheaper_at_volume
        assert plan.recommended == Recipe("lora")

    def test_a_far_domain_with_unlabelled_text_gets_domain_adaptation_first(self, references) -> None:
        settings = PlanSettings(few_labels_per_class=10, full_fine_tune_min_per_class=1000, min_unlabelled_texts_for_adaptation=30)
        plan = make_plan(CLINICAL_NOTES, CLINICAL_LABELS, references, settings)
        domain = plan.inputs.domain
        assert domain is not None and domain.far and domain.relative > 3.0
        assert domain.excluded_domains == ()
        assert plan.recommended == Recipe("dapt_then_fine_tune", "lora")
        assert plan.runner_up == Recipe("lora")
        assert run_config_for(plan) == {
            "ops": {"domain_adapted_model": {"config": {"enabled": True}}, "task_model": {"config": {"method": "lora"}}}
        }

    def test_a_far_domain_without_enough_unlabelled_text_skips_domain_adaptation(self, references) -> None:
        settings = PlanSettings(few_labels_per_class=10, full_fine_tune_min_per_class=1000, min_unlabelled_texts_for_adaptation=500)
        plan = make_plan(CLINICAL_NOTES, CLINICAL_LABELS, references, settings)
        assert plan.recommended == Recipe("lora")
        assert plan.runner_up == Recipe("dapt_then_fine_tune", "lora")
        assert "only 30 unlabelled texts (< 500)" in plan.reasons[2]

    def test_a_close_domain_with_moderate_labels_means_lora_against_full(self, amazon, references) -> None:
        plan = make_plan(*amazon, references, PlanSettings())
        domain = plan.inputs.domain
        assert domain is not None and not domain.far
        assert domain.excluded_domains == ("amazon",)  # the target is a bundled domain: left out of the reference
        assert domain.reference_domains == ("imdb", "yelp")
        assert plan.inputs.labels.total == 990
        assert (plan.recommended, plan.runner_up) == (Recipe("lora"), Recipe("full_fine_tune"))

    def test_with_the_api_allowed_the_runner_up_of_lora_is_prompting(self, amazon, references) -> None:
        plan = make_plan(*amazon, references, PlanSettings(**API_ALLOWED))
        assert (plan.recommended, plan.runner_up) == (Recipe("lora"), Recipe("prompting"))

    def test_many_labels_and_one_task_means_full_fine_tuning(self, amazon, references) -> None:
        plan = make_plan(*amazon, references, PlanSettings(full_fine_tune_min_per_class=400))
        assert (plan.recommended, plan.runner_up) == (Recipe("full_fine_tune"), Recipe("lora"))
        assert run_config_for(plan) == {
            "ops": {"domain_adapted_model": {"config": {"enabled": False}}, "task_model": {"config": {"method": "full"}}}
        }

    def test_tasks_sharing_the_backbone_means_lora_even_with_many_labels(self, amazon, references) -> None:
        plan = make_plan(*amazon, references, PlanSettings(full_fine_tune_min_per_class=400, tasks_sharing_backbone=3))
        assert (plan.recommended, plan.runner_up) == (Recipe("lora"), Recipe("full_fine_tune"))
        assert "3 tasks share the backbone" in plan.reasons[-1]

    def test_far_and_many_labels_means_domain_adaptation_then_full(self, references) -> None:
        settings = PlanSettings(few_labels_per_class=5, full_fine_tune_min_per_class=10, min_unlabelled_texts_for_adaptation=30)
        plan = make_plan(CLINICAL_NOTES, CLINICAL_LABELS, references, settings)
        assert plan.recommended == Recipe("dapt_then_fine_tune", "full")
        assert plan.recommended.label == "domain-adaptive pretraining, then full fine-tuning"
        assert run_config_for(plan)["ops"]["domain_adapted_model"]["config"]["enabled"] is True  # type: ignore[index]


def test_the_plan_record_carries_inputs_reasons_and_run_config(amazon, references) -> None:
    payload = make_plan(*amazon, references, PlanSettings()).to_json()
    assert payload["recommended"]["name"] == "lora"
    assert payload["run_config_recipe"]["label"] == "LoRA fine-tuning"
    assert payload["inputs"]["labels"]["smallest_class"] == 493
    assert payload["inputs"]["unlabelled_texts"] == 990
    assert payload["inputs"]["domain"]["threshold"] == DEFAULT_FAR_THRESHOLD
    assert len(payload["assumptions"]) == 6


class TestMeasurements:
    def test_centroid_cosine_distance_golden(self) -> None:
        assert centroid_cosine_distance(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(1.0)
        assert centroid_cosine_distance(np.array([[3.0, 4.0]]), np.array([[6.0, 8.0]])) == pytest.approx(0.0, abs=1e-12)
        assert centroid_cosine_distance(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0]])) == pytest.approx(0.29289, abs=1e-5)

    def test_bundled_domains_are_close_and_clinical_notes_far(self, references) -> None:
        for domain, texts in references.items():
            measured = measure_domain_distance(texts, references, bag_of_words)
            assert measured.excluded_domains == (domain,)
            assert 0.8 < measured.relative < 1.2, domain
            assert measured.texts_per_domain == {"target": 300, **{d: 300 for d in measured.reference_domains}}
        clinical = measure_domain_distance(CLINICAL_NOTES, references, bag_of_words)
        assert clinical.relative == pytest.approx(clinical.distance / clinical.calibration)
        assert clinical.far and clinical.relative > 3.0

    def test_counts_labels_per_class(self) -> None:
        counts = count_labels([0, 1, 1, 1], ("negative", "positive"))
        assert (counts.total, counts.per_class, counts.smallest_class) == (4, {"negative": 1, "positive": 3}, 1)
        assert count_labels([1, 1], ("negative", "positive")).per_class == {"negative": 0, "positive": 2}
        with pytest.raises(ValueError, match=r"label index 2 is outside the 2 classes"):
            count_labels([2], ("negative", "positive"))

    def test_sampling_is_seeded(self) -> None:
        texts = [f"t{i}" for i in range(50)]
        assert sample_texts(texts, 10, 0) == sample_texts(texts, 10, 0)
        assert sample_texts(texts, 10, 0) != sample_texts(texts, 10, 1)
        assert sample_texts(texts, 100, 0) == sorted(texts)
        assert sample_texts(texts[::-1], 10, 0) == sample_texts(texts, 10, 0)  # the order texts come in is irrelevant

    def test_refuses_what_it_cannot_measure(self, references) -> None:
        with pytest.raises(ValueError, match=r"need at least 2 reference domains .* \['amazon'\] overlap the target"):
            measure_domain_distance(references["amazon"], {"amazon": references["amazon"], "yelp": references["yelp"]}, bag_of_words)
        with pytest.raises(ValueError, match=r"the target has 5 texts; a domain distance needs at least 20"):
            measure_domain_distance(CLINICAL_NOTES[:5], references, bag_of_words)
        with pytest.raises(ValueError, match=r"far_threshold must be > 0, got 0"):
            measure_domain_distance(CLINICAL_NOTES, references, bag_of_words, threshold=0)
        with pytest.raises(ValueError, match=r"max_texts_per_domain must be >= 1, got 0"):
            sample_texts(CLINICAL_NOTES, 0, 0)
        with pytest.raises(ValueError, match=r"same width"):
            centroid_cosine_distance(np.zeros((2, 3)), np.zeros((2, 4)))


class TestSettingsAndRecipes:
    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"latency_sla_ms": 0.0}, r"PlanSettings\.latency_sla_ms must be > 0, got 0\.0"),
            ({"daily_requests": -5.0}, r"PlanSettings\.daily_requests must be > 0, got -5\.0"),
            ({"tasks_sharing_backbone": 0}, r"PlanSettings\.tasks_sharing_backbone must be >= 1, got 0"),
            ({"few_labels_per_class": 0}, r"PlanSettings\.few_labels_per_class must be >= 1, got 0"),
            ({"full_fine_tune_min_per_class": 50}, r"full_fine_tune_min_per_class must be > few_labels_per_class=100, got 50"),
            ({"min_unlabelled_texts_for_adaptation": -1}, r"min_unlabelled_texts_for_adaptation must be >= 0, got -1"),
            ({"far_threshold": 0.0}, r"PlanSettings\.far_threshold must be > 0, got 0\.0"),
        ],
    )
    def test_bad_settings_name_the_field_and_range(self, fields: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            PlanSettings(**fields)  # type: ignore[arg-type]

    def test_bad_recipes_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"Recipe\.name must be one of \['prompting', 'lora'"):
            Recipe("adapter")
        with pytest.raises(ValueError, match=r"Recipe 'lora' fine-tunes with 'lora', got 'full'"):
            Recipe("lora", "full")
        with pytest.raises(ValueError, match=r"fine_tune_method must be one of \['lora', 'full'\] after domain adaptation"):
            Recipe("dapt_then_fine_tune")
        with pytest.raises(ValueError, match=r"Recipe 'prompting' takes no fine_tune_method"):
            Recipe("prompting", "lora")

    def test_embed_and_pretrained_model_go_together(self, references) -> None:
        with pytest.raises(ValueError, match=r"give embed and pretrained_model together"):
            measure_plan_inputs(CLINICAL_NOTES, CLINICAL_LABELS, ("a", "b"), 30, references, bag_of_words, None, PlanSettings())

    def test_a_pretrained_model_without_a_distance_is_refused(self) -> None:
        inputs = PlanInputs("enc", count_labels([0, 1] * 200, ("a", "b")), 400, None, 1, 500.0, 1e4, 1500.0, None)
        with pytest.raises(ValueError, match=r"PlanInputs\.domain is required with 200 examples in the smallest class"):
            decide(inputs, PlanSettings())


@pytest.mark.integration
def test_minilm_calibration_close_for_bundled_far_for_clinical(references) -> None:
    """The threshold's calibration with the real MiniLM (the measurements quoted in measurements.py)."""
    from tl_platform.economics.measurements import encoder_embedder
    from tl_platform.models.foundation import FoundationSource, load_encoder, load_tokenizer, resolve_source

    location = resolve_source(FoundationSource())
    embed = encoder_embedder(load_encoder(location), load_tokenizer(location), max_length=64)
    amazon = measure_domain_distance(references["amazon"], references, embed)
    clinical = measure_domain_distance(CLINICAL_NOTES, references, embed)
    assert 0.9 < amazon.relative < 1.2 and not amazon.far
    assert clinical.relative >= DEFAULT_FAR_THRESHOLD and clinical.far
