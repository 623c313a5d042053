"""Schema migrations of the prediction log (Alembic): a fresh log, replicas migrating at once, adopting a log
that create_all made, a --no-migrate replica on an old schema, rollback of a failed upgrade, downgrade, and
``python -m tl_platform.serving.log_admin``; on SQLite and Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.serving_fixtures import OLD_PROJECTIONS, log_url, make_old_log
from tl_platform.serving import log_migrations
from tl_platform.serving.log_migrations import LogSchemaError, MigrationOutcome, downgrade_log, migrate_log
from tl_platform.serving.log_schema import PROJECTION_NAMES, log_tables, make_engine, version_table_name
from tl_platform.serving.prediction_log import PredictionLog

__all__ = ["log_url"]  # the fixture, imported for pytest
ROOT = Path(__file__).resolve().parents[2]
HEAD = "0004"


def columns(url: str, table: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return [c["name"] for c in sa.inspect(engine).get_columns(table)]
    finally:
        engine.dispose()


def versions(url: str, prefix: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = [r[0] for r in connection.execute(sa.text(f'SELECT version_num FROM "{version_table_name(prefix)}"'))]
    engine.dispose()
    return found


def _of_this_log(difference: object, prefix: str) -> bool:
    """Whether a compare_metadata difference concerns this log: other tests' (and benchmarks') logs share the
    Postgres database under other prefixes, and their tables and indexes show up as 'remove_...'."""
    if isinstance(difference, list):  # modify_* entries: [(kind, schema, table name, column, ...)]
        return any(str(entry[2]).startswith(prefix) for entry in difference)
    assert isinstance(difference, tuple)
    obj = difference[1]
    table = obj if isinstance(obj, sa.Table) else getattr(obj, "table", None)
    return table is None or table.name.startswith(prefix)


def test_a_fresh_log_is_migrated_to_head_once_and_matches_the_code(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    log = PredictionLog(url, prefix)
    assert log.migration == MigrationOutcome(None, HEAD, adopted=False)
    assert log_migrations.head_revision() == HEAD
    again = PredictionLog(url, prefix)
    assert again.migration == MigrationOutcome(HEAD, HEAD, adopted=False) and not again.migration.upgraded
    assert versions(url, prefix) == [HEAD]
    with log.engine.connect() as connection:  # the revisions build exactly the tables the code queries
        context = MigrationContext.configure(connection, opts={"version_table": version_table_name(prefix)})
        diff = compare_metadata(context, log_tables(prefix).metadata)
        tables = set(sa.inspect(connection).get_table_names())
    assert [d for d in diff if _of_this_log(d, prefix)] == []
    assert {f"{prefix}predictions", f"{prefix}feedback", f"{prefix}prediction_log_version"} <= tables
    log.close()
    again.close()


def test_two_migrators_at_once_both_succeed_and_upgrade_once(log_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, prefix = log_url
    read = log_migrations.current_revision

    def slow_read(connection: sa.Connection, table_prefix: str = "") -> str | None:
        found = read(connection, table_prefix)
        time.sleep(0.3)  # both migrators see the empty database before either writes: only the lock orders them
        return found

    monkeypatch.setattr(log_migrations, "current_revision", slow_read)
    barrier = threading.Barrier(2)
    outcomes: list[MigrationOutcome] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        engine = make_engine(url)
        barrier.wait()
        try:
            outcomes.append(migrate_log(engine, prefix))
        except BaseException as err:
            errors.append(err)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(outcomes, key=lambda o: o.before or "") == [
        MigrationOutcome(None, HEAD, adopted=False), MigrationOutcome(HEAD, HEAD, adopted=False)
    ]
    assert versions(url, prefix) == [HEAD]


def test_two_processes_migrating_at_once(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    command = [sys.executable, "-m", "tl_platform.serving.log_admin", "migrate", "--log-url", url, "--table-prefix", prefix]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ}) for _ in range(2)]
    results = [(p.wait(60), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0, 0], results
    lines = sorted(out.strip() for _, out, _ in results)
    assert lines == [f"prediction log: already at {HEAD} (head)", f"prediction log: none -> {HEAD}"]
    assert versions(url, prefix) == [HEAD]


def test_an_old_create_all_log_is_adopted_and_its_projections_typed(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    make_old_log(url, prefix)
    log = PredictionLog(url, prefix)
    assert log.migration == MigrationOutcome(None, HEAD, adopted=True)
    assert "projection" not in columns(url, f"{prefix}predictions")
    rows = {r["request_id"]: r for r in log.rows()}
    for rid, values in OLD_PROJECTIONS.items():
        assert [rows[rid][name] for name in PROJECTION_NAMES] == values + [None] * (8 - len(values)), rid
        assert (rows[rid]["text"], rows[rid]["experiment_id"], rows[rid]["routing_salt"], rows[rid]["challenger_share"]) == (
            None, None, None, None)
    assert rows["a" * 32]["confidence"] == 0.9 and rows["a" * 32]["text_chars"] == 10
    assert [(j["request_id"], j["true_label"]) for j in log.joined_feedback()] == [("a" * 32, "1")]
    assert {r["attributes"] for r in rows.values()} == {None}  # not recorded before 0003
    with log.engine.connect() as connection:
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(connection).get_indexes(f"{prefix}predictions")}
        feedback_indexes = {i["name"]: i["column_names"] for i in sa.inspect(connection).get_indexes(f"{prefix}feedback")}
    assert indexes == {f"ix_{prefix}predictions_ts": ["ts"],
                       f"ix_{prefix}predictions_model_version_role_ts": ["model_version", "role", "ts"]}
    assert feedback_indexes == {f"ix_{prefix}feedback_ts": ["ts"]}
    log.close()


def test_a_log_at_0002_with_rows_upgrades_to_0003_keeping_them_and_downgrades_back(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    make_old_log(url, prefix)
    engine = make_engine(url)
    migrate_log(engine, prefix)
    assert downgrade_log(engine, "0002", prefix) == "0002"  # the schema the previous release ran on, rows and all
    assert "attributes" not in columns(url, f"{prefix}predictions")
    with engine.begin() as connection:  # a row the previous release wrote, with text and a typed projection
        connection.execute(sa.text(
            f'INSERT INTO "{prefix}predictions" (request_id, item_index, role, ts, variant, model_version, label, '
            "latency_ms, text_chars, token_count, unknown_share, truncated, text, routing_salt, projection_0) VALUES "
            "(:r, 0, 'served', :ts, 'champion', '3', '0', 2.0, 5, 2, 0.0, :f, 'hello', 'tlp-ab', 0.25)"),
            {"r": "e" * 32, "ts": datetime(2025, 1, 3, tzinfo=UTC), "f": False})
    assert migrate_log(engine, prefix) == MigrationOutcome("0002", HEAD, adopted=False)
    log = PredictionLog(url, prefix, migrate=False)
    rows = {r["request_id"]: r for r in log.rows()}
    assert sorted(rows) == sorted([*OLD_PROJECTIONS, "e" * 32])
    assert (rows["e" * 32]["text"], rows["e" * 32]["projection_0"], rows["e" * 32]["attributes"]) == ("hello", 0.25, None)
    assert [rows["c" * 32][name] for name in PROJECTION_NAMES[:4]] == OLD_PROJECTIONS["c" * 32]
    assert [(j["request_id"], j["true_label"], j["attributes"]) for j in log.joined_feedback()] == [("a" * 32, "1", None)]
    log.close()
    assert downgrade_log(engine, "0002", prefix) == "0002"
    assert "attributes" not in columns(url, f"{prefix}predictions")
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        assert inspector.get_indexes(f"{prefix}feedback") == []
        assert {i["name"] for i in inspector.get_indexes(f"{prefix}predictions")} == {
            f"ix_{prefix}predictions_ts", f"ix_{prefix}predictions_model_version_ts"}  # kept through SQLite's table copy
        assert connection.execute(sa.text(f'SELECT count(*) FROM "{prefix}predictions"')).scalar() == 5
    engine.dispose()


def test_no_migrate_refuses_a_schema_not_at_head_naming_both_revisions(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    with pytest.raises(LogSchemaError, match=r"prediction log schema is at revision none \(an empty database\), expected 0004 \(head\)"):
        PredictionLog(url, prefix, migrate=False)
    make_old_log(url, prefix)
    with pytest.raises(LogSchemaError, match=(
        r"at revision unversioned \(tables made by create_all before migrations, i.e. 0001\), expected 0004 \(head\); "
        r"migrate it first: start one server without --no-migrate, or run `python -m tl_platform.serving.log_admin migrate")):
        PredictionLog(url, prefix, migrate=False)
    assert "projection" in columns(url, f"{prefix}predictions")  # nothing was changed
    engine = make_engine(url)
    migrate_log(engine, prefix)
    assert downgrade_log(engine, "0001", prefix) == "0001"
    with pytest.raises(LogSchemaError, match=r"at revision 0001, expected 0004 \(head\)"):
        PredictionLog(url, prefix, migrate=False)
    migrate_log(engine, prefix)
    PredictionLog(url, prefix, migrate=False).close()  # at head: starts
    engine.dispose()


def test_a_failed_upgrade_leaves_the_old_schema_as_it_was(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    make_old_log(url, prefix)
    engine = make_engine(url)
    with engine.begin() as connection:  # a projection neither database can parse as JSON
        connection.execute(sa.text(f'UPDATE "{prefix}predictions" SET projection = \'not json\' WHERE request_id = :r'),
                           {"r": "b" * 32})
    with pytest.raises(sa.exc.DBAPIError):
        migrate_log(engine, prefix)
    assert "projection" in columns(url, f"{prefix}predictions") and "text" not in columns(url, f"{prefix}predictions")
    assert not sa.inspect(engine).has_table(version_table_name(prefix))  # not even the baseline stamp survived
    engine.dispose()


def test_downgrade_restores_json_projections_and_upgrade_types_them_again(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    make_old_log(url, prefix)
    engine = make_engine(url)
    migrate_log(engine, prefix)
    assert downgrade_log(engine, "0001", prefix) == "0001"
    assert "text" not in columns(url, f"{prefix}predictions")
    with engine.connect() as connection:
        stored = dict(connection.execute(sa.text(f'SELECT request_id, projection FROM "{prefix}predictions"')).all())
    assert {rid: json.loads(text) for rid, text in stored.items()} == OLD_PROJECTIONS
    assert migrate_log(engine, prefix) == MigrationOutcome("0001", HEAD, adopted=False)
    log = PredictionLog(url, prefix)
    assert [log.served_row("c" * 32)[name] for name in PROJECTION_NAMES[:5]] == [1e-05, 2.0, -3.5, 4.25, None]  # type: ignore[index]
    log.close()
    engine.dispose()


ROLLUP_TABLES = ("ab_rollup", "ab_unit_days", "ab_unit_slices", "ab_units", "ab_daily", "ab_slices", "ab_operations",
                 "ab_latency_tail")


def test_revision_0004_adds_the_rollup_tables_and_its_downgrade_drops_them(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    engine = make_engine(url)
    migrate_log(engine, prefix)
    expected = {f"{prefix}{name}" for name in ROLLUP_TABLES}
    assert expected <= set(sa.inspect(engine).get_table_names())
    assert downgrade_log(engine, "0003", prefix) == "0003"
    assert expected & set(sa.inspect(engine).get_table_names()) == set()
    assert {f"{prefix}predictions", f"{prefix}feedback"} <= set(sa.inspect(engine).get_table_names())
    assert migrate_log(engine, prefix) == MigrationOutcome("0003", HEAD, adopted=False)
    assert expected <= set(sa.inspect(engine).get_table_names())
    with engine.begin() as connection:  # drop_log (tests/serving_fixtures.py) knows only the log's own tables
        for name in ROLLUP_TABLES:
            connection.execute(sa.text(f'DROP TABLE "{prefix}{name}"'))
    engine.dispose()


def test_tables_that_are_not_the_old_schema_are_not_stamped(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE TABLE "{prefix}predictions" (request_id VARCHAR(64) PRIMARY KEY, score FLOAT)'))
    with pytest.raises(LogSchemaError, match=(
        rf"{prefix}predictions has no version table and is not the schema create_all made before migrations "
        r"\(revision 0001\): missing columns \['confidence', .*unexpected \['score'\]; it cannot be adopted")):
        migrate_log(engine, prefix)
    engine.dispose()


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tl_platform.serving.log_admin", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_log_admin_migrates_reports_and_purges(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    make_old_log(url, "")
    current = admin("current", "--log-url", url)
    assert current.returncode == 1
    assert current.stdout.strip() == (
        "prediction log: revision unversioned (tables made by create_all before migrations, i.e. 0001); head 0004")
    purge = admin("purge-texts", "--log-url", url, "--older-than-days", "1")
    assert purge.returncode == 2 and "log_admin: prediction log schema is at revision unversioned" in purge.stderr
    migrated = admin("migrate", "--log-url", url)
    assert (migrated.returncode, migrated.stdout.strip()) == (0, "prediction log: none -> 0004 (adopted a log made before migrations)")
    assert admin("current", "--log-url", url).stdout.strip() == "prediction log: revision 0004; head 0004"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE predictions SET text = 'kept?' WHERE request_id IN (:a, :b)"),
                           {"a": "a" * 32, "b": "c" * 32})
    purge = admin("purge-texts", "--log-url", url, "--older-than-days", "30")  # the rows are from 2025-01-02
    assert purge.returncode == 0 and purge.stdout.startswith("prediction log: removed the text of 2 rows logged before ")
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM predictions WHERE text IS NOT NULL")).scalar() == 0
        assert connection.execute(sa.text("SELECT count(*) FROM predictions WHERE projection_0 IS NOT NULL")).scalar() == 3
    engine.dispose()
    bad = admin("purge-texts", "--log-url", url, "--older-than-days", "-1")
    assert bad.returncode == 2 and "--older-than-days must be in [0, 3650], got -1" in bad.stderr


def test_a_log_migrated_by_a_newer_release_is_neither_migrated_nor_served(log_url: tuple[str, str]) -> None:
    url, prefix = log_url
    PredictionLog(url, prefix).close()
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'UPDATE "{version_table_name(prefix)}" SET version_num = \'0099\''))
    message = (r"prediction log schema is at revision 0099, which this release does not know \(its head is 0004\): "
               r"a newer release migrated the log; run that release's server")
    for migrate in (True, False):
        with pytest.raises(LogSchemaError, match=message):
            PredictionLog(url, prefix, migrate=migrate)
    assert versions(url, prefix) == ["0099"]
    engine.dispose()
