"""The plan's max_length: token-length distributions, the model's limit, the latency SLA, and head+tail truncation.

Lengths here are synthetic (a table from text to token count) so each case sets the distribution it needs; the
latency figures are the FLOP model's golden numbers for MiniLM-L6 (hidden 384, feed-forward 1536, 6 layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.unit.test_decision import bag_of_words
from tl_platform.data.bundled import SENTIMENT_SCHEMA
from tl_platform.economics.decision import PlanSettings, plan_transfer, run_config_for
from tl_platform.economics.documents import plan_document
from tl_platform.economics.measurements import measure_token_lengths
from tl_platform.economics.render import to_markdown
from tl_platform.training.config import DomainAdaptationConfig, FineTuneConfig
from tl_platform.training.long_text import (
    MINILM_L6,
    ForwardShape,
    ModelWindow,
    TokenLengths,
    choose_max_length,
    count_tokens,
    encode_texts,
    head_tail_split,
    model_token_limit,
    truncate_head_tail,
)

MINILM = ModelWindow(limit=512, shape=MINILM_L6)
REFERENCES = {"x": tuple(f"the food was fine {i}" for i in range(30)), "y": tuple(f"the phone broke {i}" for i in range(30))}


def lengths_of(*counts: int) -> TokenLengths:
    return TokenLengths(tuple(sorted(counts)), len(counts))


def choose(lengths: TokenLengths, window: ModelWindow = MINILM, sla_ms: float = 500.0, **settings: float):
    defaults = {"percentile": 95.0, "multiple": 16, "floor": 64}
    return choose_max_length(lengths, window, latency_sla_ms=sla_ms, **{**defaults, **settings})  # type: ignore[arg-type]


class TestTokenLengths:
    def test_percentiles_and_shares_golden(self) -> None:
        lengths = lengths_of(*range(1, 101))  # 1..100 tokens
        assert [lengths.percentile(q) for q in (50, 90, 95, 99, 100)] == [50, 90, 95, 99, 100]
        assert lengths.share_longer_than(64) == pytest.approx(0.36)
        assert lengths.share_longer_than(100) == 0.0
        record = lengths.to_json()
        assert record["percentiles"] == {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
        assert record["truncated_share"] == {"64": pytest.approx(0.36), "128": 0.0, "256": 0.0, "512": 0.0}
        assert (record["longest"], record["mean"], record["measured_texts"]) == (100, 50.5, 100)

    def test_a_percentile_is_a_count_at_least_that_share_does_not_exceed(self) -> None:
        lengths = lengths_of(10, 10, 10, 200)
        assert lengths.percentile(75) == 10 and lengths.percentile(76) == 200

    def test_measuring_samples_with_the_seed_and_counts_every_text_once(self) -> None:
        texts = [f"text {i}" for i in range(50)]
        measured = measure_token_lengths(texts, lambda batch: [int(t.split()[1]) for t in batch], max_texts=20, seed=3)
        assert measured.texts == 50 and len(measured.lengths) == 20
        assert measured == measure_token_lengths(texts[::-1], lambda b: [int(t.split()[1]) for t in b], 20, 3)
        with pytest.raises(ValueError, match=r"the token counter returned 1 counts for 2 texts"):
            measure_token_lengths(["a", "b"], lambda batch: [1])

    def test_refuses_what_is_not_a_distribution(self) -> None:
        with pytest.raises(ValueError, match=r"at least one measured text"):
            TokenLengths((), 0)
        with pytest.raises(ValueError, match=r"ascending order"):
            TokenLengths((5, 3), 2)
        with pytest.raises(ValueError, match=r"a percentile must be in \(0, 100\], got 0"):
            lengths_of(1).percentile(0)


class TestChoice:
    def test_short_texts_get_the_floor(self) -> None:
        choice = choose(lengths_of(*[12] * 90, *[31] * 10))
        assert (choice.max_length, choice.bound_by, choice.percentile_tokens, choice.truncated_share) == (64, "floor", 31, 0.0)
        assert choice.estimated_latency_ms == pytest.approx(119.61644, abs=1e-5)
        lower_floor = choose(lengths_of(*[12] * 90, *[31] * 10), floor=16)
        assert (lower_floor.max_length, lower_floor.bound_by) == (32, "percentile")

    def test_the_percentile_is_rounded_up_to_the_multiple(self) -> None:
        lengths = lengths_of(*[50] * 90, *[150] * 8, 400, 400)  # p95 is 150, p99 400
        assert choose(lengths).max_length == 160
        assert choose(lengths, multiple=8).max_length == 152
        assert choose(lengths, percentile=90.0).max_length == 64  # 50 rounds to 64: the floor
        assert choose(lengths, sla_ms=5000.0, percentile=99.0).max_length == 400
        choice = choose(lengths)
        assert choice.truncated_share == pytest.approx(0.02) and choice.bound_by == "percentile"

    def test_long_texts_are_capped_by_the_model_limit(self) -> None:
        choice = choose(lengths_of(*[900] * 100), sla_ms=10_000.0)
        assert (choice.max_length, choice.bound_by, choice.wanted, choice.truncated_share) == (512, "model limit", 912, 1.0)
        tiny = ModelWindow(limit=128, shape=ForwardShape(32, 64, 2))
        assert choose(lengths_of(*[900] * 100), window=tiny).max_length == 128
        unlimited = ModelWindow(limit=None, shape=MINILM_L6)
        assert choose(lengths_of(*[900] * 100), window=unlimited, sla_ms=1e9).max_length == 912

    def test_the_latency_sla_caps_long_texts(self) -> None:
        choice = choose(lengths_of(*[900] * 100))  # 500 ms: 240 tokens are 481.9 ms, 256 are 517.3 ms
        assert (choice.max_length, choice.bound_by, choice.sla_limit) == (240, "latency SLA", 240)
        assert choice.estimated_latency_ms == pytest.approx(481.90068, abs=1e-5)
        tight = choose(lengths_of(*[40] * 100), sla_ms=100.0)  # 48 tokens 89.1 ms, 64 tokens 119.6 ms
        assert (tight.max_length, tight.bound_by) == (48, "latency SLA")
        assert "capped by the latency SLA" in tight.explanation

    def test_an_sla_no_window_meets_gets_the_shortest_window_and_says_so(self) -> None:
        choice = choose(lengths_of(*[40] * 100), sla_ms=1.0)
        assert (choice.max_length, choice.sla_limit, choice.bound_by) == (8, 0, "latency SLA")
        assert "no window meets it: the SLA needs a smaller model or faster serving" in choice.explanation

    def test_latency_scales_with_flops_from_the_reference(self) -> None:
        assert MINILM.estimated_latency_ms(32) == pytest.approx(59.0)
        assert MINILM.estimated_latency_ms(64) == pytest.approx(59.0 * 1396703232 / 688914432)
        assert MINILM_L6.flops(32) == 688914432.0  # 6 x (2 x 32 x (4 x 384^2 + 2 x 384 x 1536) + 4 x 32^2 x 384)
        assert MINILM.estimated_latency_ms(64, reference_ms=10.0, reference_tokens=64) == pytest.approx(10.0)

    def test_the_model_limit_ignores_unset_sentinels(self) -> None:
        assert model_token_limit(int(1e30), 128) == 128
        assert model_token_limit(512, 514) == 512
        assert model_token_limit(None, None) is None


class TestThePlan:
    TEXTS = tuple(f"review number {i}" for i in range(200))
    LABELS = tuple(i % 2 for i in range(200))

    def plan(self, counts: dict[str, int], **settings: object):
        def count(texts: Sequence[str]) -> list[int]:
            return [counts[t] for t in texts]

        return plan_transfer(
            self.TEXTS, self.LABELS, SENTIMENT_SCHEMA.names, 200, REFERENCES, bag_of_words, "test encoder", PlanSettings(**settings),  # type: ignore[arg-type]
            count_tokens=count, window=MINILM,
        )

    def test_short_texts_run_at_64_or_less(self) -> None:
        short = {t: 10 + i % 20 for i, t in enumerate(self.TEXTS)}
        plan = self.plan(short, few_labels_per_class=5)
        assert plan.length is not None and plan.length.max_length == 64
        config = run_config_for(plan)
        assert config["ops"]["task_model"]["config"]["max_length"] == 64  # type: ignore[index]
        assert config["ops"]["domain_adapted_model"]["config"]["max_length"] == 64  # type: ignore[index]
        assert self.plan(short, few_labels_per_class=5, min_max_length=16).length.max_length == 32  # type: ignore[union-attr]

    def test_long_texts_are_capped_and_the_record_says_why(self) -> None:
        long = {t: 300 + i for i, t in enumerate(self.TEXTS)}
        plan = self.plan(long, few_labels_per_class=5, latency_sla_ms=5000.0)
        assert plan.length is not None and (plan.length.max_length, plan.length.bound_by) == (496, "percentile")
        capped = self.plan({t: 600 + i for i, t in enumerate(self.TEXTS)}, few_labels_per_class=5, latency_sla_ms=5000.0)
        assert (capped.length.max_length, capped.length.bound_by) == (512, "model limit")  # type: ignore[union-attr]
        sla = self.plan(long, few_labels_per_class=5)
        assert (sla.length.max_length, sla.length.bound_by) == (240, "latency SLA")  # type: ignore[union-attr]
        payload = sla.to_json()
        assert payload["run_config"]["ops"]["task_model"]["config"] == {"method": "lora", "max_length": 240, "truncation": "head_tail"}
        assert payload["inputs"]["token_lengths"]["truncated_share"]["256"] == pytest.approx(1.0)
        assert payload["inputs"]["model_window"] == {"limit": 512, "hidden": 384, "intermediate": 1536, "layers": 6}
        assert len(payload["assumptions"]) == 9 and "not measured at plan time" in payload["assumptions"][7]
        assert payload["assumptions"][8].startswith("long texts: p95 is 489 tokens, over the 240-token cap (latency SLA)")
        markdown = to_markdown(plan_document(payload))
        assert "#### Sequence length" in markdown and "max_length 240: p95 of 200 texts is 489 tokens" in markdown
        assert "| share of texts cut at | 64: 100.0%, 128: 100.0%, 256: 100.0%, 512: 0.0% |" in markdown

    def test_counter_and_window_go_together(self) -> None:
        with pytest.raises(ValueError, match=r"give count_tokens and window together"):
            plan_transfer(self.TEXTS, self.LABELS, SENTIMENT_SCHEMA.names, 200, {}, None, None, PlanSettings(),
                          count_tokens=lambda texts: [1] * len(texts))

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"length_percentile": 0.0}, r"PlanSettings\.length_percentile must be in \(0, 100\], got 0\.0"),
            ({"length_multiple": 0}, r"PlanSettings\.length_multiple must be >= 1, got 0"),
            ({"min_max_length": 4}, r"PlanSettings\.min_max_length must be in \[8, 8192\], got 4"),
            ({"serving_latency_ms": 0.0}, r"PlanSettings\.serving_latency_ms must be > 0, got 0\.0"),
            ({"serving_latency_tokens": 0}, r"PlanSettings\.serving_latency_tokens must be >= 1, got 0"),
        ],
    )
    def test_bad_length_settings_name_the_field_and_range(self, fields: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            PlanSettings(**fields)  # type: ignore[arg-type]


class TestTheStrategy:
    """Head+tail when the measured percentile exceeds the cap (the model's window or the latency SLA's), else head:
    in the choice, the run config of both training stages, and the assumptions."""

    TEXTS, LABELS = TestThePlan.TEXTS, TestThePlan.LABELS

    def plan(self, counts: dict[str, int], **settings: object):
        return TestThePlan.plan(self, counts, few_labels_per_class=5, **settings)  # type: ignore[arg-type]

    @staticmethod
    def configs(plan) -> tuple[dict[str, object], dict[str, object]]:  # type: ignore[no-untyped-def]
        ops = run_config_for(plan)["ops"]  # type: ignore[index]
        return ops["domain_adapted_model"]["config"], ops["task_model"]["config"]

    def test_texts_that_fit_keep_plain_truncation(self) -> None:
        plan = self.plan({t: 10 + i % 20 for i, t in enumerate(self.TEXTS)})  # p95 29 tokens: the floor of 64
        adaptation, task = self.configs(plan)
        assert (task["truncation"], adaptation["truncation"]) == ("head", "head")
        assert plan.assumptions[-1].startswith("long texts: the p95 length fits the window, so the 0.0% longer texts")

    def test_a_percentile_under_the_cap_keeps_the_head_though_some_texts_are_longer(self) -> None:
        # 190 texts of 100 tokens, 10 of 1000: p95 is 100, the window 112, 5% of the texts are cut
        counts = {t: 100 if i < 190 else 1000 for i, t in enumerate(self.TEXTS)}
        plan = self.plan(counts, latency_sla_ms=5000.0)
        assert plan.length is not None and (plan.length.max_length, plan.length.bound_by) == (112, "percentile")
        assert self.configs(plan)[1]["truncation"] == "head" and plan.length.truncation == "head"
        assert "5.0% longer texts are cut to their first tokens (truncation: head)" in plan.assumptions[-1]

    @pytest.mark.parametrize(
        ("tokens", "sla_ms", "max_length", "bound_by"),
        [(600, 5000.0, 512, "model limit"), (300, 500.0, 240, "latency SLA"), (100, 100.0, 48, "latency SLA")],
    )
    def test_a_percentile_over_the_cap_gets_head_tail_and_chunks(
        self, tokens: int, sla_ms: float, max_length: int, bound_by: str
    ) -> None:
        plan = self.plan({t: tokens + i for i, t in enumerate(self.TEXTS)}, latency_sla_ms=sla_ms)
        assert plan.length is not None and (plan.length.max_length, plan.length.bound_by) == (max_length, bound_by)
        adaptation, task = self.configs(plan)
        assert task == {"method": "lora", "max_length": max_length, "truncation": "head_tail"}
        assert (adaptation["max_length"], adaptation["truncation"]) == (max_length, "chunks")
        p95 = plan.length.percentile_tokens
        assert plan.assumptions[-1].startswith(
            f"long texts: p95 is {p95} tokens, over the {max_length}-token cap ({bound_by}): 100.0% of the texts are "
            "longer, so fine-tuning, export and serving keep each one's head"
        )
        assert "(truncation: head_tail" in plan.assumptions[-1] and "(truncation: chunks)" in plan.assumptions[-1]
        record = plan.to_json()["max_length"]
        assert (record["truncation"], record["mlm_texts"]) == ("head_tail", "chunks")
        assert "head+tail truncation" in record["explanation"]
        # the run config is one the stages accept
        FineTuneConfig(**task)  # type: ignore[arg-type]
        DomainAdaptationConfig(**{k: v for k, v in adaptation.items() if k != "enabled"})  # type: ignore[arg-type]

    def test_a_cap_too_short_for_head_and_tail_keeps_the_head_and_says_why(self) -> None:
        plan = self.plan({t: 40 for t in self.TEXTS}, latency_sla_ms=1.0)  # no window meets 1 ms: the shortest, 8
        assert plan.length is not None and (plan.length.max_length, plan.length.bound_by) == (8, "latency SLA")
        assert self.configs(plan)[1]["truncation"] == "head"
        assert "but a 8-token window is too short for head+tail (it needs 32)" in plan.assumptions[-1]
        edge = choose(lengths_of(*[900] * 100), sla_ms=60.0)  # 32 tokens take 59 ms: exactly the minimum
        assert (edge.max_length, edge.truncation) == (32, "head_tail")


class TestHeadTail:
    def test_the_split_keeps_a_quarter_for_the_head(self) -> None:
        assert head_tail_split(62) == (16, 46)
        assert head_tail_split(126) == (32, 94)
        assert truncate_head_tail(list(range(10)), 4, head_share=0.5) == [0, 1, 8, 9]
        assert truncate_head_tail(list(range(4)), 4) == [0, 1, 2, 3]
        with pytest.raises(ValueError, match=r"head_share must be in \[0, 1\], got 1.5"):
            head_tail_split(10, 1.5)

    def test_encoding_matches_plain_truncation_on_texts_that_fit_and_keeps_the_end_of_long_ones(self, tiny_bert_dir: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
        short = ["the food was great", "not good at all"]
        assert encode_texts(tokenizer, short, 16, "head_tail") == encode_texts(tokenizer, short, 16, "head")
        long = " ".join(["good"] * 30 + ["bad"] * 30)
        (count,) = count_tokens(tokenizer, [long])
        assert count == 62
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        good, bad = tokenizer.convert_tokens_to_ids(["good", "bad"])
        head_tail = encode_texts(tokenizer, [long], 18, "head_tail")
        assert head_tail["input_ids"] == [[cls, *[good] * 4, *[bad] * 12, sep]]
        assert head_tail["attention_mask"] == [[1] * 18]
        assert encode_texts(tokenizer, [long], 18, "head")["input_ids"] == [[cls, *[good] * 16, sep]]
        with pytest.raises(ValueError, match=r"strategy must be one of \['head', 'head_tail'\], got 'middle'"):
            encode_texts(tokenizer, short, 16, "middle")  # type: ignore[arg-type]


class TestThePlanCommand:
    """`tlp plan --length-percentile --min-max-length`: the flags reach the plan, and its run config the stages."""

    def test_the_flags_set_the_window_and_long_texts_get_head_tail(self, tiny_bert_dir: Path, tmp_path: Path) -> None:
        import json

        from tl_platform.cli import main

        # the tiny BERT takes 128 positions; half of these texts run to about 200 tokens
        rows = [(f"the blender {i} works and I love it", "pos") for i in range(60)]
        rows += [(" ".join(["the blender broke"] * 60 + [str(i)]), "neg") for i in range(60)]
        data = tmp_path / "reviews.csv"
        data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
        base = ["plan", "--data", str(data), "--labels", "neg,pos", "--foundation", str(tiny_bert_dir), "--max-texts", "30"]
        written = tmp_path / "short.json"
        assert main([*base, "--length-percentile", "50", "--min-max-length", "16", "--write", str(written)]) == 0
        ops = json.loads(written.read_text())["ops"]
        assert ops["task_model"]["config"]["max_length"] == 16  # p50: a 10-token sentence, floored at 16
        assert (ops["task_model"]["config"]["truncation"], ops["domain_adapted_model"]["config"]["truncation"]) == (
            "head", "head")
        long = tmp_path / "long.json"
        assert main([*base, "--length-percentile", "99", "--write", str(long)]) == 0
        ops = json.loads(long.read_text())["ops"]
        assert ops["task_model"]["config"]["max_length"] == 128  # p99 is about 200 tokens: the model's limit
        assert (ops["task_model"]["config"]["truncation"], ops["domain_adapted_model"]["config"]["truncation"]) == (
            "head_tail", "chunks")

    def test_a_bad_flag_names_the_setting(self, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from tl_platform.cli import main

        assert main(["plan", "--foundation", str(tiny_bert_dir), "--min-max-length", "4"]) == 1
        assert "PlanSettings.min_max_length must be in [8, 8192], got 4" in capsys.readouterr().err
