"""Running totals that only rise: untag outcomes counted as they happen (a retried failure counts once as
failed and once as done), every total unchanged when the rows it counted are deleted (as pruning will),
seeded from the rows of a database migrated from before the counters, and the GitLab API requests and
each project's last successful catch-up in /metrics."""

from __future__ import annotations

from collections import Counter

from support.images import push_image, tags
from support.janitor import ADMIN, SECRET, mr_hook, pipeline_hook, registry_section
from support.ops import APP, OTHER, seed
from test_metrics import labels, scrape

from daemon.gitlab.stats import endpoint_of
from daemon.store import open_store
from daemon.store.db import connect
from daemon.store.schema import MIGRATIONS, migrate

BEARER = {"Authorization": f"Bearer {ADMIN}"}


def totals(j) -> dict[str, object]:
    """Every running total as /metrics, /api/v1/status and the dashboard's chart show it."""
    m = scrape(j.client)
    status = j.client.get("/api/v1/status", headers=BEARER).get_json()
    return {
        "metrics": {name: m[name] for name in ("janitor_events_total", "janitor_pushes_recorded_total",
                                               "janitor_untags_total", "janitor_events_unusable_total",
                                               "janitor_events_ignored_total", "janitor_untag_ratio")},
        "status": {p: {k: row[k] for k in ("created", "untagged", "dry_run", "restored", "ratio")}
                   for p, row in status["projects"].items()},
        "status_total": {k: status["total"][k] for k in ("created", "untagged", "dry_run", "restored")},
        "unusable": status["unusable_events"]["count"],
        "chart": j.store.daily_created_untagged(j.clock() - 30 * 86400),
    }


def test_a_failed_untag_retried_to_done_counts_one_failed_and_one_done(janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "grace_period": "1m",
                  "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
                registry={**registry_section(registry), "untag_method": "gitlab-api"}, gitlab={"url": gitlab.url})
    push_image(registry, project.path, ["mr-1", "keep"])
    gitlab.fail_tag_deletes(1)
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=1, ref="b1", mr_iid=1))
    j.hook("Merge Request Hook", mr_hook(project.path, iid=1, source_branch="b1", action="merge"))
    j.tick()
    j.tick(advance=61)
    (failed,) = j.store.list_untags()
    assert failed.outcome == "failed", failed
    outcomes = scrape(j.client)["janitor_untags_total"]
    assert outcomes == {labels(project=project.path, outcome="failed"): 1}

    answer = j.client.post(f"/api/v1/untags/{failed.id}/retry", headers=BEARER)
    assert answer.status_code == 202, answer.get_json()
    j.tick()

    assert j.store.list_untags()[0].outcome == "done" and tags(registry, project.path) == ["keep"]
    outcomes = scrape(j.client)["janitor_untags_total"]
    assert outcomes == {labels(project=project.path, outcome="failed"): 1,
                        labels(project=project.path, outcome="done"): 1}
    assert j.store.project_counters()[project.path]["failed"] == 0, "failed untags now: a gauge"


def test_every_total_stays_when_the_rows_it_counted_are_deleted(seeded_janitor):
    j = seeded_janitor
    j.store.mark_processed(2, j.clock(), error="ValueError: not a pipeline")
    j.store.count_ignored("unused_kind", APP, "issue", j.clock())
    j.store.mark_restored(j.ids["done"][0], j.clock())
    before = totals(j)
    assert before["metrics"]["janitor_events_unusable_total"] == {(): 1}
    assert before["status"][APP]["created"] == 4 and before["status"][APP]["untagged"] == 2
    assert before["status"][OTHER]["dry_run"] == 1 and before["status_total"]["restored"] == 1
    assert sum(c for _, c, _ in before["chart"]) == 6 and sum(u for _, _, u in before["chart"]) == 2

    db = j.store.db
    for table in ("operator_requests", "untags", "plans", "push_records", "pipelines", "inbox"):
        db.execute(f"DELETE FROM {table}")

    assert totals(j) == before


def test_a_database_from_before_the_counters_keeps_its_totals(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    (version,) = [i for i, step in enumerate(MIGRATIONS) if step.__name__ == "_v16_counters"]
    monkeypatch.setattr("daemon.store.schema.MIGRATIONS", MIGRATIONS[:version])
    old = open_store(path)
    seed(old, 1_000_000.0)
    old.mark_processed(2, 1_000_000.0, error="ValueError: not a pipeline")
    rows = old.db.execute
    expected = {
        "events": sorted(rows("SELECT COALESCE(project_path, ''), kind, COUNT(*) FROM inbox GROUP BY 1, 2")),
        "pushes": sorted(rows("SELECT project_path, source, COUNT(*) FROM push_records WHERE state IN"
                              " ('confirmed', 'untagged') GROUP BY 1, 2")),
        "untags": sorted(rows("SELECT project_path, outcome, COUNT(*) FROM untags WHERE outcome <> 'pending'"
                              " GROUP BY 1, 2")),
    }
    assert rows("SELECT COUNT(*) FROM sqlite_master WHERE name = 'counters'").fetchone()[0] == 0
    old.close()
    monkeypatch.undo()

    store = open_store(path)
    assert [tuple(r) for r in store.event_counts()] == expected["events"]
    assert [tuple(r) for r in store.recorded_push_counts()] == expected["pushes"]
    assert [tuple(r) for r in store.finished_untag_counts()] == expected["untags"]
    assert store.unusable_event_count() == 1
    assert store.daily_created_untagged(0.0) == [("1970-01-12", 6, 2)]
    assert store.project_counters()[APP] | {"ratio": 0} == {"created": 4, "untagged": 2, "scheduled": 0,
                                                            "held": 1, "failed": 1, "dry_run": 0, "ratio": 0}
    # from here on each change is counted as it happens
    store.add_event(delivery_key="after", source="gitlab", kind="push", project_path=OTHER, headers={},
                    body=b"{}", received_at=1_000_100.0)
    assert dict(((p, k), n) for p, k, n in store.event_counts())[(OTHER, "push")] == 2
    store.close()


def test_an_old_database_with_nothing_in_it_starts_at_zero(tmp_path):
    db = connect(str(tmp_path / "empty.db"))
    migrate(db)
    db.close()
    store = open_store(str(tmp_path / "empty.db"))
    assert store.event_counts() == [] and store.unusable_event_count() == 0
    assert store.daily_created_untagged(0.0) == [] and store.project_counters() == {}
    store.close()


def test_build_info_and_process_metrics_are_served(seeded_janitor):
    m = scrape(seeded_janitor.client)
    ((build, value),) = m["janitor_build_info"].items()
    assert value == 1 and dict(build)["version"] and dict(build)["python"].count(".") == 2
    assert m["process_resident_memory_bytes"][()] > 0
    assert m["process_cpu_seconds_total"][()] > 0
    assert "python_info" in m


def gitlab_api_calls(gitlab) -> Counter[str]:
    """The stand-in's own count of API requests, by the endpoint label the janitor gives each route."""
    out: Counter[str] = Counter()
    for route, n in gitlab.calls.items():
        _method, _, path = route.partition(" ")
        if path.startswith("/api/v4/"):
            out[endpoint_of(path)] += n
    return out


def counted(j) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, n in scrape(j.client).get("janitor_gitlab_requests_total", {}).items():
        out[dict(key)["endpoint"]] += int(n)
    return out


def test_gitlab_requests_of_the_web_and_the_worker_are_counted_as_gitlab_served_them(
        janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url, "timeout": 5})
    served, before = gitlab_api_calls(gitlab), counted(j)
    # the web's CI gate asks GitLab about a job token it does not know, and one of a real job
    refused = j.client.post("/api/v1/ci/pushes", json={"image": f"{registry.host}/{project.path}:mr-7"},
                            headers={"JOB-TOKEN": "glcbt-not-a-job"})
    assert refused.status_code == 401
    job = gitlab.add_job(project, pipeline_id=7, ref="feature/x")
    j.client.post("/api/v1/ci/pushes", json={"image": f"{registry.host}/{project.path}:mr-7"},
                  headers={"JOB-TOKEN": job})
    # the worker catches up from the API
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=8, ref="feature/y", mr_iid=8))
    j.tick()
    gitlab.set_mr(project, 8, source_branch="feature/y", state="merged")
    (report,) = j.worker.reconciler.run()
    assert report.ok, report.summary()

    by_gitlab = gitlab_api_calls(gitlab) - served
    by_janitor = counted(j) - before
    assert by_janitor["jobs"] == by_gitlab["jobs"] == 2
    assert by_janitor["merge_requests"] >= 1 and by_janitor["projects"] >= 1
    assert by_janitor == by_gitlab
    m = scrape(j.client)
    assert m["janitor_gitlab_requests_total"][labels(endpoint="jobs", code="401")] >= 1
    total = sum(by_janitor.values()) + sum(before.values())
    assert sum(m["janitor_gitlab_request_seconds_count"].values()) == total
    assert max(m["janitor_gitlab_request_seconds_sum"].values()) > 0


def test_the_last_successful_catch_up_is_served_per_project(janitor, registry, gitlab, project):
    missing = f"{project.path}-gone"
    j = janitor([{"path": p, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False}
                 for p in (project.path, missing)],
                registry=registry_section(registry), gitlab={"url": gitlab.url, "timeout": 5})
    assert "janitor_reconcile_last_success_timestamp_seconds" not in scrape(j.client)
    reports = {r.project_path: r for r in j.worker.reconciler.run()}
    assert reports[project.path].ok and not reports[missing].ok
    first = j.clock()
    assert scrape(j.client)["janitor_reconcile_last_success_timestamp_seconds"] == {labels(project=project.path): first}
    j.clock.advance(600)
    j.worker.reconciler.run()
    served = scrape(j.client)["janitor_reconcile_last_success_timestamp_seconds"]
    assert served == {labels(project=project.path): first + 600}
