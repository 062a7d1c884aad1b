"""POST /api/v1/ci/untag: SPEC 7's checks in order, first failure answers, then the untag runs at once.
Jobs record their tags after pushing them (the job starts first: GitLab's created_at of the image shows
the push was the job's, SPEC 14)."""

import datetime as dt

from support.images import digest_of, push_image, tags
from support.janitor import SECRET, registry_section

SLUG = {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}


def broker(janitor, registry, gitlab, project):
    """From the ``janitor`` factory: the janitor CI jobs of ``project`` ask to untag, two per pipeline."""
    return janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                     "dry_run": False, "ci_untag_per_pipeline": 2, "tags": [SLUG]}],
                   registry=registry_section(registry), gitlab={"url": gitlab.url})


def call(j, route, token, body):
    headers = {"JOB-TOKEN": token} if token else {}
    return j.client.post(f"/api/v1/ci/{route}", json=body, headers=headers)


def image(registry, repo, tag):
    return {"image": f"{registry.host}/{repo}:{tag}"}


def test_checks_in_order_and_the_answer_of_each(janitor, registry, gitlab, project):
    j, repo = broker(janitor, registry, gitlab, project), project.path
    job = gitlab.add_job(project, pipeline_id=10, ref="feature-a")
    other_job = gitlab.add_job(project, pipeline_id=11, ref="other-ref")
    push_image(registry, repo, ["feature-a", "feature-b", "latest", "other-ref"])
    assert call(j, "pushes", other_job, image(registry, repo, "other-ref")).status_code == 201
    for tag in ("feature-a", "feature-b", "latest"):
        assert call(j, "pushes", job, image(registry, repo, tag)).status_code == 201

    answers = {
        "no token": call(j, "untag", None, image(registry, repo, "feature-a")),
        "bad token": call(j, "untag", "wrong", {"image": "garbage"}),  # token is checked before the body
        "bad body": call(j, "untag", job, {"image": "no-tag-here"}),
        "bad host": call(j, "untag", job, {"image": f"evil.example/{repo}:feature-a"}),
        "other project": call(j, "untag", job, image(registry, "someone/else", "latest")),  # scope before protected
        "protected": call(j, "untag", job, image(registry, repo, "latest")),
        "other ref": call(j, "untag", job, image(registry, repo, "other-ref")),
        "never pushed": call(j, "untag", job, image(registry, repo, "nothing")),
    }
    got = {name: (r.status_code, r.get_json()["error"]) for name, r in answers.items()}
    assert got == {
        "no token": (401, "job_token_missing"), "bad token": (401, "job_token_invalid"),
        "bad body": (400, "malformed"), "bad host": (400, "malformed"),
        "other project": (403, "out_of_scope"), "protected": (409, "protected"),
        "other ref": (403, "not_owned"), "never pushed": (403, "not_owned"),
    }
    first = call(j, "untag", job, image(registry, repo, "feature-a"))
    second = call(j, "untag", job, image(registry, repo, "feature-b"))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.get_json()["untag_id"] != second.get_json()["untag_id"]
    over = call(j, "untag", job, image(registry, repo, "feature-a"))
    assert over.status_code == 429 and over.headers["Retry-After"]
    j.tick()
    assert sorted(tags(registry, repo)) == ["latest", "other-ref"]
    assert {u.tag: u.outcome for u in j.store.list_untags()} == {"feature-a": "done", "feature-b": "done"}


def test_a_branch_cleans_up_after_its_earlier_pipelines(janitor, registry, gitlab, project):
    """Every pipeline of the job's ref counts as its own: an older pipeline's record is no live owner."""
    j, repo = broker(janitor, registry, gitlab, project), project.path
    old = gitlab.add_job(project, pipeline_id=20, ref="feature-c")
    push_image(registry, repo, ["feature-c"])
    assert call(j, "pushes", old, image(registry, repo, "feature-c")).status_code == 201
    new = gitlab.add_job(project, pipeline_id=21, ref="feature-c")
    r = call(j, "untag", new, image(registry, repo, "feature-c"))
    assert r.status_code == 202 and r.get_json()["outcome"] == "pending"
    j.tick()
    assert tags(registry, repo) == []


def test_a_tag_the_job_never_pushed_is_never_its_own(janitor, registry, gitlab, project):
    """Issue 13: a job on feature/evil claims release-candidate, pushed an hour before it started by
    someone else. Nothing shows the job pushed it, so the record is 409 and the untag 403 ``not_owned``;
    the image stays."""
    j, repo = broker(janitor, registry, gitlab, project), project.path
    released = push_image(registry, repo, ["release-candidate"],
                          created=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    evil = gitlab.add_job(project, pipeline_id=30, ref="feature/evil")
    claimed = call(j, "pushes", evil, image(registry, repo, "release-candidate"))
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
    refused = call(j, "untag", evil, image(registry, repo, "release-candidate"))
    assert (refused.status_code, refused.get_json()["error"]) == (403, "not_owned")
    j.tick()
    assert tags(registry, repo) == ["release-candidate"] and digest_of(registry, repo, "release-candidate") == released
