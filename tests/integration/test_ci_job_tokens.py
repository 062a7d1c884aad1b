"""Job tokens GitLab refuses cost GitLab little: a refused token is answered from memory for a while, and
each client address may have only so many tokens refused before it must wait (429 with Retry-After). The
stand-in counts the ``GET /api/v4/job`` calls the janitor makes."""

from __future__ import annotations

import pytest
from support.janitor import SECRET, Clock

from daemon.errors import JobTokenError
from daemon.gitlab.client import GitLab
from daemon.web.ci import REFUSALS_BURST

JOB_CALLS = "GET /api/v4/job"
ROUTES = ["/api/v1/ci/pushes", "/api/v1/ci/untag"]


def build(janitor, gitlab, project):
    return janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token}],
                   gitlab={"url": gitlab.url})


def post(j, route, token, address="10.0.0.1"):
    return j.client.post(route, json={"image": f"127.0.0.1:5000/{j.settings.projects[0].path}:feat"},
                         headers={"JOB-TOKEN": token}, environ_base={"REMOTE_ADDR": address})


def test_a_refused_token_is_refused_from_memory_for_a_minute(gitlab):
    clock = Clock()
    client = GitLab(gitlab.url, clock=clock)
    for _ in range(5):
        with pytest.raises(JobTokenError):
            client.verify_job("glcbt-not-a-job")
    assert gitlab.calls[JOB_CALLS] == 1
    clock.advance(61)
    with pytest.raises(JobTokenError):
        client.verify_job("glcbt-not-a-job")
    assert gitlab.calls[JOB_CALLS] == 2


@pytest.mark.parametrize("route", ROUTES)
def test_the_same_refused_token_again_asks_gitlab_once(janitor, gitlab, project, route):
    j = build(janitor, gitlab, project)
    for _ in range(3):
        answer = post(j, route, "glcbt-not-a-job")
        assert answer.status_code == 401 and answer.get_json()["error"] == "job_token_invalid"
    assert gitlab.calls[JOB_CALLS] == 1


@pytest.mark.parametrize("route", ROUTES)
def test_an_address_whose_tokens_gitlab_keeps_refusing_waits(janitor, gitlab, project, route):
    j = build(janitor, gitlab, project)
    for n in range(REFUSALS_BURST):
        assert post(j, route, f"glcbt-guess-{n}").status_code == 401
    assert gitlab.calls[JOB_CALLS] == REFUSALS_BURST

    valid = gitlab.add_job(project, pipeline_id=7, ref="feat")
    for token in ("glcbt-guess-more", valid):  # GitLab is not asked for this address, even about a good token
        answer = post(j, route, token)
        assert answer.status_code == 429, answer.get_json()
        assert answer.get_json()["error"] == "too_many_refused_tokens" and answer.get_json()["message"]
        assert int(answer.headers["Retry-After"]) >= 1
    assert gitlab.calls[JOB_CALLS] == REFUSALS_BURST

    # Other addresses are not held up; the waiting one may try again after Retry-After.
    assert post(j, route, "glcbt-elsewhere", address="10.0.0.2").status_code == 401
    assert post(j, route, valid, address="10.0.0.3").status_code not in (401, 429)
    j.clock.advance(int(post(j, route, "glcbt-guess-more").headers["Retry-After"]))
    assert post(j, route, "glcbt-once-more").status_code == 401
    assert post(j, route, "glcbt-and-again").status_code == 429
    assert gitlab.calls[JOB_CALLS] == REFUSALS_BURST + 3


def test_both_routes_share_an_addresss_budget(janitor, gitlab, project):
    j = build(janitor, gitlab, project)
    for n in range(REFUSALS_BURST):
        assert post(j, ROUTES[n % 2], f"glcbt-guess-{n}").status_code == 401
    assert [post(j, route, "glcbt-guess-more").status_code for route in ROUTES] == [429, 429]


def test_tokens_gitlab_accepts_never_use_up_an_address(janitor, gitlab, project):
    j = build(janitor, gitlab, project)
    tokens = [gitlab.add_job(project, pipeline_id=10 + n, ref="feat") for n in range(3 * REFUSALS_BURST)]
    answers = [post(j, ROUTES[0], token).status_code for token in tokens]
    assert 401 not in answers and 429 not in answers, answers
    assert gitlab.calls[JOB_CALLS] == len(tokens)
