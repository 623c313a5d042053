"""The proposal report: documents, renderers, plots, the HTML page, and the `tlp plan` and `tlp report` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_costs import RUNS
from tests.unit.test_decision import bag_of_words
from tl_platform.cli import build_parser, main, run_config_from_args
from tl_platform.data.bundled import SENTIMENT_SCHEMA, bundled_source
from tl_platform.data.loading import load_labelled_text
from tl_platform.economics.cost_report import CostSettings, build_cost_report
from tl_platform.economics.decision import PlanSettings, plan_transfer
from tl_platform.economics.documents import cost_document, plan_document, roi_document
from tl_platform.economics.measurements import bundled_reference_texts
from tl_platform.economics.plots import plot_cost_comparison, plot_roi_curve
from tl_platform.economics.render import Bullets, Code, Heading, Paragraph, Table, to_html, to_markdown
from tl_platform.economics.report import (
    COST_PLOT,
    COST_RECORD,
    PLAN_RECORD,
    ROI_PLOT,
    ROI_RECORD,
    ProposalIncompleteError,
    load_proposal,
    render_proposal_html,
    write_record,
)
from tl_platform.economics.roi import RoiInputs, roi_model
from tl_platform.proposal_commands import report_run_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def records() -> dict[str, dict[str, object]]:
    dataset = load_labelled_text(bundled_source("amazon"))
    plan = plan_transfer(
        dataset.texts, dataset.labels, SENTIMENT_SCHEMA.names, 693, bundled_reference_texts(), bag_of_words,
        "test encoder", PlanSettings(),
    )
    costs = build_cost_report(RUNS, CostSettings())
    roi = roi_model(RoiInputs("Ada <b>Lovelace</b>", setup_cost_usd=costs.setup_cost_usd,
                              monthly_cost_usd=costs.monthly_running_cost_usd))
    return {"plan": plan.to_json(), "costs": costs.to_json(), "roi": roi.to_json(), "_costs": costs, "_roi": roi}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def published(records: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the three assets' outputs, as the assets write them."""
    root = tmp_path_factory.mktemp("artifacts")
    for asset, files in (
        ("transfer_plan", {PLAN_RECORD: records["plan"]}),
        ("cost_report", {COST_RECORD: records["costs"]}),
        ("roi_curve", {ROI_RECORD: records["roi"]}),
    ):
        directory = root / asset / "run-1"
        for name, payload in files.items():
            write_record(directory, name, payload)  # type: ignore[arg-type]
    plot_cost_comparison(records["_costs"], root / "cost_report" / "run-1" / COST_PLOT)  # type: ignore[arg-type]
    plot_roi_curve(records["_roi"], root / "roi_curve" / "run-1" / ROI_PLOT)  # type: ignore[arg-type]
    return root


def test_blocks_render_to_markdown_and_escaped_html() -> None:
    blocks = [Heading("Plan <1>"), Paragraph("a & b"), Bullets(("x", "y")), Table(("k", "v"), (("a|b", "<i>"),)),
              Code('{"a": 1}', "json")]
    assert to_markdown(blocks) == (
        '### Plan <1>\n\na & b\n\n- x\n- y\n\n| k | v |\n| --- | --- |\n| a\\|b | <i> |\n\n```json\n{"a": 1}\n```\n'
    )
    page = to_html(blocks)
    assert "<h3>Plan &lt;1&gt;</h3>" in page and "<p>a &amp; b</p>" in page
    assert "<td>a|b</td><td>&lt;i&gt;</td>" in page and "<pre><code>{&quot;a&quot;: 1}</code></pre>" in page
    with pytest.raises(ValueError, match=r"table row \('a',\) has 1 cells for 2 columns"):
        Table(("k", "v"), (("a",),))


def test_documents_state_the_decision_the_costs_and_the_breakeven(records: dict[str, object]) -> None:
    plan = to_markdown(plan_document(records["plan"]))  # type: ignore[arg-type]
    assert plan.startswith("### Recommended: LoRA fine-tuning\n\nRunner-up to benchmark against: full fine-tuning.")
    assert "| labelled examples | 990 (negative 497, positive 493) |" in plan
    assert '"method": "lora"' in plan and '"enabled": false' in plan
    assert "Runs LoRA fine-tuning; save it and pass it to tlp run --config." in plan
    costs = to_markdown(cost_document(records["costs"]))  # type: ignore[arg-type]
    assert "### Alternatives at 7B parameters (estimated)" in costs
    assert "| pretraining from scratch | 2e+12 | 8.4e+22 | 186,966 | $373,932 |" in costs
    assert "| task_model | task_model-3 | 3,600.0 | cpu x 2 | 2.0000 | $0.08 |" in costs
    assert "| crossover (requests a day) | 126,312 |" in costs
    roi = to_markdown(roi_document(records["roi"]))  # type: ignore[arg-type]
    assert roi.startswith("### Breakeven month 5, year-1 ROI ")
    assert "| 0 |  | $80,000 | -$80,000 | -$80,000 |" in roi


def test_a_prompting_plan_says_the_main_job_trains_its_benchmark() -> None:
    from tests.unit.test_decision import few_per_class

    dataset = load_labelled_text(bundled_source("amazon"))
    texts, labels = few_per_class(dataset.texts, dataset.labels, 30)
    plan = plan_transfer(texts, labels, SENTIMENT_SCHEMA.names, 42, bundled_reference_texts(), bag_of_words,
                         "test encoder", PlanSettings(latency_sla_ms=2000.0, daily_requests=1000.0))
    text = to_markdown(plan_document(plan.to_json()))
    assert "### Recommended: prompting a frontier model" in text
    assert "Runs LoRA fine-tuning, the runner-up, as the benchmark for prompting a frontier model;" in text


def test_plots_are_pngs(published: Path) -> None:
    for path in (published / "cost_report" / "run-1" / COST_PLOT, published / "roi_curve" / "run-1" / ROI_PLOT):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_the_proposal_page_holds_three_sections_and_both_plots(published: Path) -> None:
    page = render_proposal_html(load_proposal(*proposal_dirs(published)))
    assert page.startswith("<!DOCTYPE html>")
    assert [s in page for s in ("1. The plan", "2. The cost comparison", "3. The return on investment")] == [True] * 3
    assert page.count('src="data:image/png;base64,') == 2
    assert "Recommended: LoRA fine-tuning" in page and "Breakeven month 5" in page
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in page and "<b>Lovelace" not in page


def proposal_dirs(root: Path) -> tuple[Path, Path, Path]:
    return root / "transfer_plan" / "run-1", root / "cost_report" / "run-1", root / "roi_curve" / "run-1"


def test_tlp_report_writes_the_page_from_the_catalogue(
    published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tl_platform.proposal_commands as proposal_commands

    asked: list[tuple[str, ...]] = []

    def catalogue(specs: tuple[str, ...]) -> list[Path]:  # the Dagster catalogue's answer (tested in tests/dagster)
        asked.append(tuple(specs))
        return list(proposal_dirs(published))

    monkeypatch.setattr(proposal_commands, "catalogue_dirs", catalogue)
    out = tmp_path / "proposal.html"
    assert main(["report", "--out", str(out)]) == 0
    assert asked == [("transfer_plan", "roi_curve:cost_report", "roi_curve")]
    assert out.read_text().count("data:image/png;base64,") == 2
    with pytest.raises(SystemExit, match=r"--materialise needs --owner NAME"):
        main(["report", "--materialise"])


def test_a_directory_without_its_record_is_named(tmp_path: Path) -> None:
    for asset in ("transfer_plan", "cost_report", "roi_curve"):
        (tmp_path / asset / "run-1").mkdir(parents=True)
    with pytest.raises(ProposalIncompleteError, match=r"holds no transfer_plan\.json"):
        load_proposal(*proposal_dirs(tmp_path))


def test_report_run_config_sets_the_owner_over_a_file(tmp_path: Path) -> None:
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"ops": {"cost_report": {"config": {"a100_hour_usd": 1.2}}}}))
    args = build_parser().parse_args(["report", "--materialise", "--owner", "Grace", "--config", str(config_file)])
    assert report_run_config(args) == {
        "ops": {"cost_report": {"config": {"a100_hour_usd": 1.2}}, "roi_curve": {"config": {"monitoring_owner": "Grace"}}}
    }


BENCH_BLOCK = {"requests_per_second": 280.5, "server": "this server, INT8 ONNX, dynamic batching", "concurrency": 32,
               "rounds": 3, "cpu_cores": 2, "measured_at": "2026-11-25T19:10:00+00:00", "note": "load generator on the same machine"}


def test_a_serving_bench_file_prices_the_replica(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"ratios": {}, "replica_throughput": BENCH_BLOCK}))
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"ops": {"cost_report": {"config": {"a100_hour_usd": 1.2}}}}))
    args = build_parser().parse_args(
        ["report", "--materialise", "--owner", "Grace", "--config", str(config_file), "--serving-bench", str(bench)]
    )
    cost = report_run_config(args)["ops"]["cost_report"]["config"]
    assert cost["a100_hour_usd"] == 1.2  # the file's settings stay
    assert cost["serving_throughput_requests_per_second"] == 280.5
    assert cost["serving_throughput_source"] == (
        "measured by bench/serving_throughput.py: this server, INT8 ONNX, dynamic batching, concurrency 32, "
        "median of 3 rounds, 2-core CPU, load generator on the same machine, measured 2026-11-25T19:10:00+00:00"
    )


RATE = r"replica_throughput\.requests_per_second must be a positive number, got "


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"ratios": {}}, r"no 'replica_throughput' object; write it with bench/serving_throughput\.py --json"),
        ({"replica_throughput": [1]}, r"no 'replica_throughput' object"),
        ({"replica_throughput": {}}, RATE + r"None"),
        ({"replica_throughput": {"requests_per_second": "fast"}}, RATE + r"'fast'"),
        ({"replica_throughput": {"requests_per_second": 0}}, RATE + r"0"),
        ({"replica_throughput": {"requests_per_second": True}}, RATE + r"True"),
        ({"replica_throughput": {"requests_per_second": float("nan")}}, RATE + r"nan"),
    ],
)
def test_a_malformed_serving_bench_file_is_named(document: dict[str, object], message: str) -> None:
    from tl_platform.economics.serving import throughput_from_bench

    with pytest.raises(ValueError, match=r"bench\.json: " + message):
        throughput_from_bench(document, "bench.json")


def test_serving_bench_flag_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    args = build_parser().parse_args(["report", "--materialise", "--owner", "G", "--serving-bench", str(tmp_path / "no.json")])
    with pytest.raises(SystemExit, match=r"serving bench file .*no\.json does not exist"):
        report_run_config(args)
    (tmp_path / "bad.json").write_text("{not json")
    args = build_parser().parse_args(["report", "--materialise", "--owner", "G", "--serving-bench", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match=r"tlp: Expecting property name"):
        report_run_config(args)
    with pytest.raises(SystemExit, match=r"--serving-bench feeds the cost report when it is materialised: add --materialise"):
        main(["report", "--serving-bench", str(tmp_path / "bad.json"), "--out", str(tmp_path / "p.html")])


def test_report_materialises_with_the_measured_throughput(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"replica_throughput": BENCH_BLOCK}))
    launched: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        launched.append(command)
        return subprocess.CompletedProcess(command, 3)  # dagster's exit status is handed back

    monkeypatch.setenv("TLP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    code = main(["report", "--materialise", "--owner", "G", "--serving-bench", str(bench), "--out", str(tmp_path / "p.html")])
    # the instance's storage is created first (once), then the three assets are materialised
    assert code == 3 and [c[1:3] for c in launched] == [["instance", "migrate"], ["asset", "materialize"]]
    command = launched[1]
    assert command[1:4] == ["asset", "materialize", "-m"] and "transfer_plan,cost_report,roi_curve" in command
    config = json.loads(Path(command[command.index("-c") + 1]).read_text())
    assert config["ops"]["cost_report"]["config"]["serving_throughput_requests_per_second"] == 280.5


def test_tlp_plan_prints_the_plan_and_writes_a_run_config_tlp_run_reads(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "plan.yaml"
    code = main(["plan", "--foundation", str(tiny_bert_dir), "--max-texts", "60", "--write", str(target)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("### Recommended: ") and "| labelled examples | 990 (negative 497, positive 493) |" in out
    ops = run_config_from_args(build_parser().parse_args(["run", "--config", str(target)]))["ops"]
    printed = json.loads(out.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert ops == printed["ops"]
    assert set(ops) == {"labelled_data", "foundation_model", "domain_adapted_model", "task_model"}
    assert ops["task_model"]["config"]["method"] in ("lora", "full")
    assert ops["labelled_data"]["config"] == {"domain": "amazon", "split_seed": 42}
    assert ops["foundation_model"]["config"] == {"source": str(tiny_bert_dir)}


def test_tlp_plan_names_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--data", str(tmp_path / "d.csv")]) == 1
    assert "--labels is required with --data" in capsys.readouterr().err
    bad = tmp_path / "d.csv"
    bad.write_text("text,label\ngood,1\nmeh,2\n")
    assert main(["plan", "--data", str(bad), "--labels", "0,1"]) == 1
    assert "line 3: label '2' is not in the schema's label set ['0', '1']" in capsys.readouterr().err
    assert main(["plan", "--latency-sla-ms", "0", "--foundation", str(tmp_path / "missing")]) == 1
    assert "PlanSettings.latency_sla_ms must be > 0, got 0.0" in capsys.readouterr().err
