"""The note on a merge request, as text: what it lists, how it is bounded, and when GitLab's answer is a
refusal (never asked again) or a failure (asked again later)."""

from __future__ import annotations

import pytest

from daemon.domain.model import Untag
from daemon.errors import GitLabError
from daemon.execute.notes import LISTED_DONE, LISTED_OTHER, marker, note_body, refusal, retry_delay


def untag(untag_id: int, tag: str, outcome: str, reason: str | None = None) -> Untag:
    return Untag(id=untag_id, plan_id=5, project_path="g/app", repository="g/app/api", tag=tag,
                 expected_digest="sha256:" + "a" * 64, outcome=outcome, reason=reason, created_at=0.0)


def test_each_untagged_image_has_its_restore_command_and_the_rest_is_brief():
    body = note_body(5, "g/app", "merge_request_merged",
                     [untag(1, "mr-1", "done"), untag(2, "keep", "skipped", "protected"),
                      untag(3, "gone", "skipped", "missing"), untag(4, "busy", "failed", "registry_unavailable")],
                     "registry.example.com")
    lines = body.splitlines()
    assert lines[0] == marker(5) == "<!-- registry-janitor mr_note plan=5 -->"
    assert "This merge request was merged: **registry-janitor** untagged the 1 image tag pushed for it" in lines[1]
    assert "- `registry.example.com/g/app/api:mr-1`: put back with `registry-janitor restore 1`" in lines
    assert ("Kept 2: `registry.example.com/g/app/api:keep` (protected), `registry.example.com/g/app/api:gone`"
            " (already gone).") in lines
    assert "Failed 1, still tagged (an operator may retry them): `registry.example.com/g/app/api:busy`" \
        " (registry_unavailable)." in lines
    assert "restore 2" not in body and "restore 3" not in body and "restore 4" not in body


def test_long_plans_are_listed_up_to_a_bound():
    done = [untag(i, f"t{i}", "done") for i in range(LISTED_DONE + 7)]
    kept = [untag(1000 + i, f"k{i}", "skipped", "live_owner") for i in range(LISTED_OTHER + 3)]
    body = note_body(5, "g/app", "merge_request_closed", done + kept, "")
    assert "This merge request was closed" in body
    assert body.count("registry-janitor restore ") == LISTED_DONE + 1  # each listed one, and the how-to
    assert "- and 7 more: `registry-janitor audit --project g/app`" in body
    assert f"`g/app/api:k{LISTED_OTHER - 1}` (used by a live ref) and 3 more." in body
    assert f"k{LISTED_OTHER}`" not in body


class AnsweredError(GitLabError):
    def __init__(self, status: int | None) -> None:
        super().__init__(f"GitLab answered {status}")
        self.status = status


@pytest.mark.parametrize(("status", "refused"), [(401, True), (403, True), (404, True), (400, True),
                                                 (429, False), (500, False), (502, False), (None, False)])
def test_what_gitlab_answers_is_a_refusal_or_a_failure(status, refused):
    assert refusal(AnsweredError(status)) is refused
    assert refusal(GitLabError("unreachable")) is False


def test_failures_wait_longer_each_time_up_to_an_hour():
    assert [retry_delay(n) for n in range(1, 6)] == [60.0, 240.0, 960.0, 3600.0, 3600.0]
