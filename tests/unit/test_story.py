"""The main command's story, its pure parts: the simulated world, progress, state on disk, records and report."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tests.story_fixtures import story_day_record
from tl_platform.story.progress import PROGRESS_LOGGER, Progress, format_duration, training_bars
from tl_platform.story.report import render_story_html
from tl_platform.story.scenario import (
    StoryConfig,
    day_volume,
    first_day,
    load_story_data,
    shortened,
    timeline,
    traffic_for,
)
from tl_platform.story.state import StoryLockedError, StoryMismatchError, StoryState, StoryStore, fingerprint
from tl_platform.story.summary import narrative, summary_lines


class TestStoryConfig:
    def test_the_default_story_is_thirty_days_or_more(self) -> None:
        config = StoryConfig()
        days = timeline(config, first_day(config, date(2026, 11, 26)))
        assert len(days) == config.total_days >= 30
        assert days[-1].day == date(2026, 11, 23)  # ends days_ago_end (3) days before today: windows complete
        assert [d.phase for d in days].count("benign") == config.benign_days

    @pytest.mark.parametrize(("field", "value", "message"), [
        ("domain", "twitter", "domain must be one of"),
        ("benign_domain", "amazon", "three different bundled domains"),
        ("harmful_days", 1, "harmful_days must be at least 2"),
        ("learn_days", 21, "must leave harmful days"),
        ("slang_share", 0.0, "slang_share must be in (0, 1]"),
        ("feedback_delay_hours", 30.0, "labels land before the window is judged"),
        ("ab_max_days", 3, "ab_max_days (3) must be at least ab_min_days"),
        ("days_ago_end", 1, "days_ago_end must be at least 3"),
        ("task_epochs", 0, "task_epochs must be in [1, 50]"),
    ])
    def test_bad_settings_name_the_field_and_the_rule(self, field: str, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")):
            StoryConfig(**{field: value})  # type: ignore[arg-type]

    def test_the_weekly_cycle_makes_weekends_quieter(self) -> None:
        config = StoryConfig(weekday_requests=500)
        assert day_volume(config, date(2026, 11, 23)) == 500  # Monday
        assert day_volume(config, date(2026, 11, 28)) == 325  # Saturday
        assert day_volume(config, date(2026, 11, 29)) == 300  # Sunday


class TestTraffic:
    def test_phases_bring_their_domains_and_the_harmful_days_mix_slang_with_the_own_domain(self) -> None:
        config = shortened(weekday_requests=60, slang_share=2 / 3)
        data = load_story_data(config)
        days = timeline(config, date(2026, 11, 20))
        steady, benign, harmful = (traffic_for(config, data, days[i]) for i in (0, 1, 2))
        assert [p.attributes["domain"] for p in steady] == ["amazon"]
        assert [p.attributes["domain"] for p in benign] == ["yelp"]
        assert [(p.attributes["domain"], p.attributes["register"]) for p in harmful] == [
            ("imdb", "slang"), ("amazon", "standard")]
        volume = day_volume(config, days[2].day)
        assert len(harmful[0].texts) == round(volume * config.slang_share)
        assert sum(len(p.texts) for p in harmful) == volume
        assert all(p.units == config.units and p.feedback_delay_hours == config.feedback_delay_hours for p in harmful)

    def test_benign_reviews_are_two_sentences_of_one_sentiment(self) -> None:
        from tl_platform.story.scenario import paired_reviews

        data = load_story_data(shortened())
        assert "two sentences per review" in data.benign.source and len(data.benign) == len(_bundled("yelp")[0])
        yelp = {text: label for text, label in zip(*_bundled("yelp"), strict=True)}
        for text, label in zip(data.benign.texts[:50], data.benign.labels[:50], strict=True):
            first = next(t for t in yelp if text.startswith(t + " "))
            assert yelp[first] == label and yelp[text[len(first) + 1:]] == label
        assert paired_reviews(data.benign).texts[0].count(" ") > data.benign.texts[0].count(" ")

    def test_the_model_never_meets_its_training_texts_and_a_retrain_is_judged_on_texts_it_did_not_learn(self) -> None:
        from tl_platform.data import SplitFractions, stratified_split
        from tl_platform.data.bundled import bundled_source
        from tl_platform.data.loading import load_labelled_text

        config = StoryConfig()
        data = load_story_data(config)
        train = set(stratified_split(load_labelled_text(bundled_source("amazon")), SplitFractions(), 42).train.texts)
        assert not train & set(data.own_held_out.texts)
        assert not set(data.harmful_learn.texts) & set(data.harmful_judge.texts)

    def test_a_day_is_the_same_traffic_every_time_and_differs_by_seed(self) -> None:
        config = shortened(weekday_requests=80)
        data = load_story_data(config)
        day = timeline(config, date(2026, 11, 20))[3]
        assert traffic_for(config, data, day) == traffic_for(config, data, day)
        other = shortened(weekday_requests=80, seed=8)
        assert traffic_for(other, load_story_data(other), day)[0].texts != traffic_for(config, data, day)[0].texts


class TestProgress:
    def test_a_log_gets_a_line_at_each_tenth_not_a_stream_of_redraws(self) -> None:
        stream = io.StringIO()
        progress = Progress(stream, interactive=False)
        for done in range(1, 201):
            progress.bar("day 1/6", done, 200, began=0.0)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 11 and lines[-1].count("█") == 28 and "200/200" in lines[-1]  # the start, then tenths
        assert "estimating time left" in lines[0]
        assert "\r" not in stream.getvalue()

    def test_a_terminal_redraws_in_place_and_a_stage_reports_its_time_or_its_failure(self) -> None:
        stream = io.StringIO()
        progress = Progress(stream, interactive=True)
        progress.bar("epochs", 1, 4, began=0.0)
        progress.bar("epochs", 4, 4, began=0.0)
        assert stream.getvalue().count("\r\x1b[2K") == 2 and stream.getvalue().endswith("\n")
        with pytest.raises(KeyboardInterrupt), progress.stage("models"):
            raise KeyboardInterrupt
        assert "✗ models stopped after" in stream.getvalue()
        assert format_duration(125) == "2m05s" and format_duration(9.4) == "9s"

    def test_training_reports_through_the_progress_logger_to_a_bar(self) -> None:
        stream = io.StringIO()
        logger = logging.getLogger(PROGRESS_LOGGER)
        with training_bars(Progress(stream, interactive=False)):
            for step in (5, 10):
                logger.info("x", extra={"tlp_progress": {"phase": "fine-tuning (lora)", "step": step, "steps": 10,
                                                         "epoch": step / 5, "epochs": 2}})
        assert "fine-tuning (lora)" in stream.getvalue() and "10/10" in stream.getvalue()
        assert "epoch 2.0/2" in stream.getvalue()
        assert not logger.handlers  # removed after the block


class TestStoryState:
    def test_state_survives_a_reload_and_an_unfinished_story_resumes_only_with_its_own_settings(self, tmp_path: Path) -> None:
        store = StoryStore(tmp_path)
        config = shortened()
        state, resumed = store.start_or_resume(config)
        assert not resumed
        state.days.append({"index": 0})
        state.sensor_cursor = '{"last_judged_window": "2026-11-01"}'
        store.save(state)
        again, resumed = store.start_or_resume(config)
        assert resumed and again.days == [{"index": 0}] and again.sensor_cursor == state.sensor_cursor
        with pytest.raises(StoryMismatchError, match=r"seed 7 -> 8.*--restart"):
            store.start_or_resume(shortened(seed=8))
        again.finished = True
        store.save(again)
        fresh, resumed = store.start_or_resume(shortened(seed=8))  # a finished story is told again from the start
        assert not resumed and fresh.days == [] and fresh.fingerprint == fingerprint(shortened(seed=8))

    def test_a_corrupt_state_file_is_refused_with_what_to_do(self, tmp_path: Path) -> None:
        store = StoryStore(tmp_path)
        store.path.write_text("{not json")
        with pytest.raises(StoryMismatchError, match=r"not a story state file.*--restart"):
            store.start_or_resume(shortened())

    def test_a_second_command_on_the_same_home_is_refused_naming_the_holder(self, tmp_path: Path) -> None:
        store = StoryStore(tmp_path)
        holder = ("import fcntl, sys, time\nf = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                  "f.seek(0); f.truncate(); f.write('pid 4242'); f.flush(); print('held', flush=True); time.sleep(30)")
        child = subprocess.Popen([sys.executable, "-c", holder, str(store.directory / "story.lock")],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "held"
            with pytest.raises(StoryLockedError, match="already running \\(pid 4242\\)"), store.lock():
                pass
        finally:
            child.kill()
            child.wait()
        with store.lock():
            assert (store.directory / "story.lock").read_text() == f"pid {os.getpid()}"


class TestRecordsAndReport:
    def test_the_narrative_and_the_report_tell_what_happened(self) -> None:
        config = shortened()
        state = StoryState(fingerprint="f", config=config.to_json(), champion_version="1",
                           plan={"recommended": "LoRA fine-tuning", "runner_up": "full fine-tuning",
                                 "relative_domain_distance": 0.4})
        retrain = {"window": "2026-11-03", "candidate_version": "2", "reasons": "drift and breach",
                   "forgetting": {"fresh_gain_points": 9.5, "previous_change_points": -0.5}}
        decision = {"verdict": "ship", "summary": "ship: +6 points", "reasons": ["better"], "days_run": 2,
                    "primary": {"difference": 0.06, "ci_low": 0.02, "ci_high": 0.1}}
        state.days = [
            story_day_record(0, "steady", False, "holds", 0.96),
            story_day_record(1, "benign", True, "holds", 0.92, alerts=["drift without a canary breach"]),
            story_day_record(2, "harmful", True, "breach", 0.78, retrain=retrain),
            story_day_record(3, "harmful", True, "breach", 0.80, decision=decision),
        ]
        state.retrain = retrain
        state.experiment = {"id": "story-v2", "start_day": "2026-11-04", "verdict": "ship", "decided_day": "2026-11-04",
                            "summary": "ship: +6 points", "reasons": ["better"]}
        told = narrative(state, config)
        assert "drift on 1 of 1 days, the canary breached its SLO on 0; 1 alert(s) sent" in told[3]
        assert "drift on 2 of 2 days, the canary breached its SLO on 2" in told[4]
        assert "candidate v2 gained +9.5 points" in told[5] and "decided on 2026-11-04: ship" in told[6]
        assert state.days[2]["line"].endswith("RETRAIN -> candidate v2") and "canary breach 0.780" in state.days[2]["line"]
        page = render_story_html(state, config, None, {"state": "/x/story.json"})
        assert page.count("data:image/png;base64,") == 4  # traffic, drift, canary, A/B
        assert "story-v2: ship" in page and "retrain -&gt; candidate v2" in page and "/x/story.json" in page

    def test_a_story_without_a_retrain_says_so(self) -> None:
        config = shortened()
        state = StoryState(fingerprint="f", config=config.to_json())
        state.days = [story_day_record(2, "harmful", True, "holds", 0.9)]
        assert "No retrain was triggered." in narrative(state, config)
        assert "No experiment ran" in render_story_html(state, config, None, {})
        assert json.loads(json.dumps(state.to_json()))["days"][0]["canary_status"] == "holds"


    def test_the_summary_names_the_home_the_ui_commands_need_and_where_a_stop_resumes(self, tmp_path: Path) -> None:
        config = shortened()
        state = StoryState(fingerprint="f", config=config.to_json())
        report, log = tmp_path / "report.html", tmp_path / "events.log"
        assert "`.venv/bin/tlp ui`" in "\n".join(summary_lines(state, config, report, log, 1.0))
        told = "\n".join(summary_lines(state, config, report, log, 1.0, home=tmp_path))
        assert f"`TLP_HOME={tmp_path} .venv/bin/tlp ui`" in told and f"`TLP_HOME={tmp_path} .venv/bin/tlp mlflow-ui`" in told
        assert state.position(config.total_days) == "the transfer plan"
        state.plan = {"recommended": "LoRA"}
        assert state.position(config.total_days) == "the model stages"
        state.models_run_id = "r"
        state.days = [story_day_record(0, "steady", False, "holds", 0.96)]
        assert state.position(config.total_days) == f"day 2 of {config.total_days}"
        state.days = state.days * config.total_days
        assert state.position(config.total_days) == "the cost report"


class TestRunCommand:
    def test_flags_choose_the_story_and_the_op_config_travels_with_it(self) -> None:
        from tl_platform.cli import build_parser, run_config_from_args
        from tl_platform.story.command import story_settings

        args = build_parser().parse_args(["run", "--domain", "imdb", "--epochs", "3", "--skip-domain-adaptation",
                                          "--method", "full", "--seed", "11"])
        config, ops = story_settings(args, run_config_from_args(args))
        assert (config.domain, config.benign_domain, config.harmful_domain) == ("imdb", "amazon", "yelp")
        assert config.seed == 11 and config.task_epochs == 3 and config.domain_adaptation is False
        assert config.total_days >= 30
        assert ops["task_model"]["config"]["method"] == "full"
        quick, _ = story_settings(build_parser().parse_args(["run", "--quick"]), {"ops": {}})
        assert quick == shortened()

    def test_a_bad_choice_is_refused_before_anything_runs(self, capsys: pytest.CaptureFixture[str]) -> None:
        from tl_platform.cli import build_parser, run_config_from_args
        from tl_platform.story.command import cmd_story

        args = build_parser().parse_args(["run", "--epochs", "0"])
        assert cmd_story(args, run_config_from_args(args)) == 2
        assert "task_epochs must be in [1, 50]" in capsys.readouterr().err


def _bundled(domain: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    from tl_platform.data.bundled import bundled_source
    from tl_platform.data.loading import load_labelled_text

    dataset = load_labelled_text(bundled_source(domain))
    return dataset.texts, dataset.labels
