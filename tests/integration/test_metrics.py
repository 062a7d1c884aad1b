"""/metrics parsed back with prometheus_client's own parser, every value checked against storage; the
registry request counters observed in the worker on the real registry; the same numbers from any
process; the admin token when ``server.metrics_require_token``."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from support.images import push_image
from support.janitor import ADMIN
from support.ops import APP, BEARER, OTHER, live_janitor, merge_mr, ops_projects

from daemon.registry.stats import RegistryStats
from daemon.wiring import build_app, build_store, build_worker


def scrape(client, **kw) -> dict[str, dict[tuple, float]]:
    response = client.get("/metrics", **kw)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(**kw: str) -> tuple:
    return tuple(sorted(kw.items()))


def test_counters_and_gauges_match_storage(seeded_janitor):
    m = scrape(seeded_janitor.client)
    assert m["janitor_events_total"] == {labels(project=APP, kind="pipeline"): 2,
                                         labels(project=APP, kind="merge_request"): 1,
                                         labels(project=OTHER, kind="push"): 1}
    assert m["janitor_pushes_recorded_total"] == {labels(project=APP, source="pattern"): 2,
                                                  labels(project=APP, source="ci"): 2,
                                                  labels(project=OTHER, source="pattern"): 2}
    assert m["janitor_untags_total"] == {labels(project=APP, outcome="done"): 2,
                                         labels(project=APP, outcome="failed"): 1,
                                         labels(project=APP, outcome="skipped"): 1,
                                         labels(project=OTHER, outcome="dry_run"): 1}
    expected_plans = {state: 0 for state in ("scheduled", "ready", "running", "cancelled")}
    expected_plans.update(done=2, held=1, dry_run=1)
    assert m["janitor_plans"] == {labels(state=s): n for s, n in expected_plans.items()}
    assert m["janitor_queue_depth"] == {(): seeded_janitor.store.queue_depth()} == {(): 3}
    assert m["janitor_untag_ratio"][labels(project=APP)] == 0.5
    assert "janitor_worker_heartbeat_age_seconds" not in m
    seeded_janitor.tick()
    m = scrape(seeded_janitor.client)
    assert m["janitor_queue_depth"] == {(): 0}
    assert m["janitor_worker_heartbeat_age_seconds"] == {(): 0}


def test_counts_grow_as_pushes_are_untagged(seeded_janitor):
    """A push stays counted once it is untagged: the counter never goes down."""
    before = scrape(seeded_janitor.client)["janitor_pushes_recorded_total"]
    seeded_janitor.store.mark_untagged(1, seeded_janitor.clock())
    assert scrape(seeded_janitor.client)["janitor_pushes_recorded_total"] == before


def test_every_process_reports_the_same_numbers(seeded_janitor):
    """Two web processes (as gunicorn runs them) on one database answer alike."""
    second_store = build_store(seeded_janitor.settings)
    second = build_app(seeded_janitor.settings, second_store, clock=seeded_janitor.clock).test_client()
    def janitor_families(client):  # process_* describe the scraped process, not storage
        return {name: v for name, v in scrape(client).items() if name.startswith("janitor_")}

    first = janitor_families(seeded_janitor.client)
    assert first["janitor_untags_total"]
    assert janitor_families(second) == first
    second_store.close()


def test_metrics_need_the_admin_token_when_configured(janitor):
    harness = janitor(ops_projects(), server={"metrics_require_token": True})
    refused = harness.client.get("/metrics")
    assert refused.status_code == 401 and refused.get_json()["error"] == "unauthorized"
    assert harness.client.get("/metrics", auth=("prometheus", ADMIN)).status_code == 200
    assert "janitor_plans" in scrape(harness.client, headers=BEARER)


def test_metrics_are_open_by_default(seeded_janitor):
    assert seeded_janitor.client.get("/metrics").status_code == 200


def test_registry_requests_are_counted_in_the_worker_and_served_from_storage(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    stats = RegistryStats()
    j.worker = build_worker(j.settings, j.store, clock=j.clock, registry_stats=stats)
    push_image(registry, project.path, ["mr-42", "mr-42-debug"])
    registry.mark()
    merge_mr(j, project.path)
    served = registry.request_log(repo=project.path)
    m = scrape(j.client)
    counts = m["janitor_registry_requests_total"]
    for method in ("HEAD", "PUT", "DELETE"):
        by_registry = sum(1 for r in served if r.method == method)
        by_janitor = sum(v for k, v in counts.items() if dict(k)["method"] == method)
        assert by_registry and by_janitor == by_registry, method
    assert all(dict(k)["code"].isdigit() for k in counts)
    # the histogram: cumulative buckets ending in +Inf == _count, per method
    buckets = m["janitor_registry_request_seconds_bucket"]
    for method in {dict(k)["method"] for k in counts}:
        total = sum(v for k, v in counts.items() if dict(k)["method"] == method)
        series = sorted(((float(dict(k)["le"]), v) for k, v in buckets.items() if dict(k)["method"] == method))
        assert [v for _, v in series] == sorted(v for _, v in series), "cumulative"
        assert series[-1] == (float("inf"), total)
        assert m["janitor_registry_request_seconds_count"][labels(method=method)] == total
        assert m["janitor_registry_request_seconds_sum"][labels(method=method)] > 0
    assert stats.flush(j.store) == 0, "everything was flushed by the ticks"


def test_label_values_are_escaped(seeded_janitor):
    seeded_janitor.store.add_event(delivery_key="odd", source="gitlab", kind='we"ird\\kind', project_path="a\nb",
                                   headers={}, body=b"{}", received_at=seeded_janitor.clock())
    m = scrape(seeded_janitor.client)
    assert m["janitor_events_total"][labels(project="a\nb", kind='we"ird\\kind')] == 1
