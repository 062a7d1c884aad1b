"""GitLab request counting: endpoint labels from a fixed list (never ids or paths), and counts storage
refused kept for the next request."""

from __future__ import annotations

import pytest

from daemon.gitlab.stats import GitLabStats, endpoint_of

BASE = "https://gitlab.example.com/api/v4"


@pytest.mark.parametrize(("url", "endpoint"), [
    (f"{BASE}/job", "jobs"),
    (f"{BASE}/projects/grp%2Fapp", "projects"),
    (f"{BASE}/projects/grp%2Fapp/merge_requests?state=merged&page=2", "merge_requests"),
    (f"{BASE}/projects/grp%2Fapp/merge_requests/7", "merge_requests"),
    (f"{BASE}/projects/grp%2Fapp/merge_requests/7/notes", "notes"),
    (f"{BASE}/projects/grp%2Fapp/pipelines/12", "pipelines"),
    (f"{BASE}/projects/grp%2Fapp/repository/branches/feature%2Fnotes", "branches"),
    (f"{BASE}/projects/grp%2Fapp/repository/branches/hooks", "branches"),
    (f"{BASE}/projects/grp%2Fapp/hooks/3", "hooks"),
    (f"{BASE}/projects/grp%2Fapp/registry/repositories", "registry_repositories"),
    (f"{BASE}/projects/grp%2Fapp/registry/repositories/5/tags/v1", "registry_tags"),
    (f"{BASE}/groups/grp/projects", "projects"),
    (f"{BASE}/personal_access_tokens/self", "personal_access_tokens"),
    ("https://gitlab.example.com/sub/path/api/v4/job", "jobs"),
    ("/api/v4/projects/:id/merge_requests/:merge_request_iid/notes", "notes"),
    (f"{BASE}/projects/grp%2Fapp/secret_things/1", "other"),
    (f"{BASE}/projects/1/merge_requests/7/evil%2F..%2Fjob", "other"),
    ("https://gitlab.example.com/jwt/auth?service=container_registry", "other"),
    ("https://gitlab.example.com/", "other"),
])
def test_each_url_gets_a_label_from_the_fixed_list(url, endpoint):
    assert endpoint_of(url) == endpoint


class FlakySink:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.counts: dict[tuple[str, int], tuple[int, float]] = {}
        self.buckets: dict[tuple[str, str], int] = {}

    def add_gitlab_observations(self, counts, buckets) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        for key, (n, seconds) in counts.items():
            m, t = self.counts.get(key, (0, 0.0))
            self.counts[key] = (m + n, t + seconds)
        for key, n in buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n


def test_each_request_is_stored_at_once():
    sink = FlakySink(0)
    stats = GitLabStats(sink)
    stats("jobs", 200, 0.02)
    assert sink.counts == {("jobs", 200): (1, 0.02)} and sink.buckets == {("jobs", "0.025"): 1}
    stats("jobs", 200, 60.0)
    assert sink.counts == {("jobs", 200): (2, 60.02)} and sink.buckets == {("jobs", "0.025"): 1, ("jobs", "+Inf"): 1}


def test_what_storage_refused_is_stored_with_the_next_request():
    sink = FlakySink(1)
    stats = GitLabStats(sink)
    stats("notes", 0, 0.5)  # storage fails: nothing lost, nothing raised
    assert sink.counts == {}
    stats("notes", 201, 0.1)
    assert sink.counts == {("notes", 0): (1, 0.5), ("notes", 201): (1, 0.1)}
    assert stats.flush() == 0
