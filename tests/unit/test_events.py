"""daemon.domain.events on GitLab's documented payloads (project, group and system hooks) and on registry
notification envelopes (v1 and v2): pure tables, no I/O."""

import re
from datetime import UTC, datetime

import pytest
from support.payloads import load_payload

from daemon.domain.events import (
    MAX_DEPTH,
    MAX_ID,
    MAX_TEXT,
    ZERO_SHA,
    IgnoredEvent,
    MalformedEvent,
    MergeRequestEvent,
    PipelineEvent,
    PushEvent,
    event_kind,
    is_zero_sha,
    merge_request_of_ref,
    parse_gitlab,
    parse_registry,
    parse_time,
    project_path_of,
    too_deep,
)

NOW = 1_700_000_000.0
DIGEST = "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- which kind of event, whatever hook sent it ------------------------------------------------------

@pytest.mark.parametrize(("header", "name", "kind"), [
    ("Pipeline Hook", "pipeline_event", "pipeline"),
    ("Merge Request Hook", "merge_request_event_open", "merge_request"),
    ("Push Hook", "push_event", "push"),
    ("Push Hook", "push_event_branch_delete", "push"),
    ("Tag Push Hook", "tag_push_event", "tag_push"),
    # system hooks: always "System Hook"; the push example has no object_kind, only event_name
    ("System Hook", "system_hook_push", "push"),
    ("System Hook", "system_hook_tag_push", "tag_push"),
    ("System Hook", "system_hook_merge_request", "merge_request"),
    ("System Hook", "system_hook_repository_update", "repository_update"),
])
def test_event_kind_of_every_documented_payload(header, name, kind):
    assert event_kind(header, load_payload(name)) == kind


@pytest.mark.parametrize(("header", "kind"), [
    ("Pipeline Hook", "pipeline"),
    ("Merge Request Hook", "merge_request"),
    ("Push Hook", "push"),
    ("Tag Push Hook", "tag_push"),
    ("Job Hook", "job"),
    (None, "unknown"),
])
def test_event_kind_falls_back_to_the_header(header, kind):
    assert event_kind(header, {"no": "kind"}) == kind


@pytest.mark.parametrize(("name", "path"), [
    ("pipeline_event", "gitlab-org/gitlab-test"),
    ("merge_request_event_open", "gitlabhq/gitlab-test"),
    ("push_event", "mike/diaspora"),
    ("system_hook_push", "mike/diaspora"),
    ("system_hook_merge_request", "gitlabhq/gitlab-test"),
    ("system_hook_tag_push", "jsmith/example"),
])
def test_project_path_of_every_hook_type(name, path):
    assert project_path_of(load_payload(name)) == path


@pytest.mark.parametrize(("payload", "path"), [
    ({"path_with_namespace": "legacy/system"}, "legacy/system"),
    ({"project": {"path_with_namespace": ""}}, None),
    ({"project": "group/app"}, None),
    ([], None),
    ({}, None),
])
def test_project_path_of_odd_shapes(payload, path):
    assert project_path_of(payload) == path


# -- pipelines ---------------------------------------------------------------------------------------

def test_documented_pipeline_payload_trusts_the_merge_request_block():
    # The doc example says ref "master" with source merge_request_event; live GitLab sends the MR's
    # source branch, which is what the merge_request block carries.
    event = parse_gitlab("Pipeline Hook", load_payload("pipeline_event"), NOW)
    assert isinstance(event, PipelineEvent)
    p = event.pipeline
    assert (p.project_path, p.pipeline_id, p.iid, p.ref, p.mr_iid) == ("gitlab-org/gitlab-test", 31, 3, "test", 1)
    assert (p.sha, p.status, p.is_tag, p.default_branch) == (
        "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "success", False, "master")
    assert p.created_at == ts("2016-08-12T15:23:28")
    assert p.finished


@pytest.mark.parametrize(("status", "finished"), [
    ("success", True), ("failed", True), ("canceled", True), ("skipped", True),
    ("running", False), ("pending", False), ("created", False), ("manual", False),
])
def test_pipeline_status_decides_finished(status, finished):
    body = load_payload("pipeline_event")
    body["object_attributes"]["status"] = status
    event = parse_gitlab("Pipeline Hook", body, NOW)
    assert isinstance(event, PipelineEvent) and event.pipeline.finished is finished


def test_branch_and_tag_pipelines():
    body = load_payload("pipeline_event")
    body["merge_request"] = None
    body["object_attributes"].update(ref="feature/x", source="push")
    p = parse_gitlab("Pipeline Hook", body, NOW).pipeline
    assert (p.ref, p.mr_iid, p.is_tag) == ("feature/x", None, False)

    body["object_attributes"].update(ref="v1.2.0", tag=True)
    p = parse_gitlab("Pipeline Hook", body, NOW).pipeline
    assert (p.ref, p.is_tag) == ("v1.2.0", True)


@pytest.mark.parametrize(("here", "source", "target", "ref"), [
    (1, 1, 1, "test"),                            # the doc example: an MR from a branch of this project
    (14, 99, 14, "refs/merge-requests/1/head"),   # a fork's MR, its pipeline run in the target project
    (99, 99, 14, "test"),                         # a fork's MR, its pipeline run in the fork: its own branch
    (None, 99, 14, "test"),                       # not known which project this is: as the hook says
    (14, None, 14, "test"),
])
def test_a_fork_merge_request_pipeline_in_the_target_runs_on_the_mrs_ref(here, source, target, ref):
    body = load_payload("pipeline_event")
    body["project"]["id"] = here
    body["merge_request"].update(source_project_id=source, target_project_id=target)
    p = parse_gitlab("Pipeline Hook", body, NOW).pipeline
    assert (p.ref, p.mr_iid) == (ref, 1)


@pytest.mark.parametrize("ref", ["test", "refs/merge-requests/1/head"])
def test_a_fork_merge_request_pipeline_keeps_gitlabs_source_branch_for_its_variables(ref):
    # Newer GitLab sends Ci::Pipeline#source_ref (the source branch) as the ref, older the pipeline's own
    # ref; either way $CI_COMMIT_REF_SLUG in its jobs is the source branch's.
    body = load_payload("pipeline_event")
    body["project"]["id"] = 14
    body["object_attributes"]["ref"] = ref
    body["merge_request"].update(source_project_id=99, target_project_id=14)
    event = parse_gitlab("Pipeline Hook", body, NOW)
    assert (event.pipeline.ref, event.pipeline.mr_iid, event.source_branch) == (
        "refs/merge-requests/1/head", 1, "test")


def test_a_merge_request_ref_without_a_merge_request_block_names_the_mr():
    body = load_payload("pipeline_event")
    body["merge_request"] = None
    body["object_attributes"]["ref"] = "refs/merge-requests/12/head"
    event = parse_gitlab("Pipeline Hook", body, NOW)
    assert (event.pipeline.ref, event.pipeline.mr_iid, event.source_branch) == (
        "refs/merge-requests/12/head", 12, None)


@pytest.mark.parametrize(("ref", "iid"), [
    ("refs/merge-requests/7/head", 7), ("refs/merge-requests/7/merge", 7), ("refs/merge-requests/7/train", 7),
    ("refs/merge-requests/x/head", None), ("feature/refs/merge-requests/7/head", None), ("main", None),
])
def test_merge_request_of_ref(ref, iid):
    assert merge_request_of_ref(ref) == iid


def test_a_branch_pipeline_has_no_source_branch_and_knows_its_creation_time():
    body = load_payload("pipeline_event")
    body["merge_request"] = None
    body["object_attributes"].update(ref="feature/x", source="push")
    event = parse_gitlab("Pipeline Hook", body, NOW)
    assert (event.source_branch, event.created_known) == (None, True)


def test_pipeline_without_created_at_uses_the_arrival_time_and_ids_may_be_strings():
    body = load_payload("pipeline_event")
    del body["object_attributes"]["created_at"]
    body["object_attributes"]["id"] = "77"
    body["project"]["default_branch"] = None
    event = parse_gitlab("Pipeline Hook", body, NOW)
    p = event.pipeline
    assert (p.created_at, p.pipeline_id, p.default_branch) == (NOW, 77, None)
    assert event.created_known is False


def _without(name, *path):
    body = load_payload(name)
    node = body
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return body


def _with(name, value, *path):
    body = load_payload(name)
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize(("header", "body", "says"), [
    ("Pipeline Hook", _without("pipeline_event", "object_attributes"), "object_attributes"),
    ("Pipeline Hook", _without("pipeline_event", "project"), "project"),
    ("Pipeline Hook", _without("pipeline_event", "project", "path_with_namespace"), "path_with_namespace"),
    ("Pipeline Hook", _with("pipeline_event", "abc", "object_attributes", "id"), "object_attributes.id"),
    ("Pipeline Hook", _with("pipeline_event", True, "object_attributes", "id"), "object_attributes.id"),
    ("Pipeline Hook", _with("pipeline_event", None, "object_attributes", "id"), "object_attributes.id"),
    ("Pipeline Hook", _with("pipeline_event", "", "object_attributes", "ref"), "object_attributes.ref"),
    ("Merge Request Hook", _without("merge_request_event_open", "object_attributes", "iid"), "iid"),
    ("Merge Request Hook", _without("merge_request_event_open", "object_attributes", "source_branch"),
     "source_branch"),
    ("Merge Request Hook", _without("merge_request_event_open", "project"), "path_with_namespace"),
    ("Push Hook", _without("push_event", "ref"), "ref"),
    ("Push Hook", _without("push_event", "project"), "path_with_namespace"),
])
def test_malformed_payloads_say_what_is_missing(header, body, says):
    with pytest.raises(MalformedEvent, match=says.replace(".", r"\.")):
        parse_gitlab(header, body, NOW)


@pytest.mark.parametrize("body", [[], "text", None, 3])
def test_a_body_that_is_not_an_object_is_malformed(body):
    with pytest.raises(MalformedEvent):
        parse_gitlab("Pipeline Hook", body, NOW)


# -- merge requests ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "name", "action", "state"), [
    ("Merge Request Hook", "merge_request_event_open", "open", "opened"),
    ("Merge Request Hook", "merge_request_event_merge", "merge", "merged"),
    ("Merge Request Hook", "merge_request_event_close", "close", "closed"),
    ("System Hook", "system_hook_merge_request", "open", "opened"),
])
def test_merge_request_payloads(header, name, action, state):
    event = parse_gitlab(header, load_payload(name), NOW)
    assert isinstance(event, MergeRequestEvent)
    assert (event.iid, event.action, event.state, event.source_branch) == (1, action, state, "ms-viewport")
    assert (event.source_project_id, event.target_project_id) == (14, 14)


def test_system_merge_request_hook_lacks_fields_without_error():
    body = load_payload("system_hook_merge_request")
    event = parse_gitlab("System Hook", body, NOW)
    assert (event.project_path, event.default_branch) == ("gitlabhq/gitlab-test", "master")
    # fewer attributes still: no action, no project ids, no default branch
    attrs = body["object_attributes"]
    for key in ("action", "source_project_id", "target_project_id"):
        del attrs[key]
    del body["project"]["default_branch"]
    event = parse_gitlab("System Hook", body, NOW)
    assert (event.action, event.source_project_id, event.target_project_id, event.default_branch) == (
        "update", None, None, None)


@pytest.mark.parametrize(("state", "action"), [("merged", "merge"), ("closed", "close"), ("opened", "update")])
def test_merge_request_without_action_takes_it_from_the_state(state, action):
    body = load_payload("merge_request_event_open")
    del body["object_attributes"]["action"]
    body["object_attributes"]["state"] = state
    assert parse_gitlab("Merge Request Hook", body, NOW).action == action


def test_fork_merge_request_keeps_both_project_ids():
    body = load_payload("merge_request_event_open")
    body["object_attributes"].update(source_project_id=99, target_project_id=14, action="reopen")
    event = parse_gitlab("Merge Request Hook", body, NOW)
    assert (event.source_project_id, event.target_project_id, event.action) == (99, 14, "reopen")


# -- pushes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "name", "expected"), [
    ("Push Hook", "push_event", PushEvent("mike/diaspora", "master", False, False, "master")),
    ("Push Hook", "push_event_branch_delete", PushEvent("mike/diaspora", "master", False, True, "master")),
    ("Tag Push Hook", "tag_push_event", PushEvent("jsmith/example", "v1.0.0", True, False, "master")),
    ("System Hook", "system_hook_push", PushEvent("mike/diaspora", "master", False, False, "master")),
    ("System Hook", "system_hook_tag_push", PushEvent("jsmith/example", "v1.0.0", True, False, "master")),
])
def test_push_payloads(header, name, expected):
    assert parse_gitlab(header, load_payload(name), NOW) == expected


def test_system_push_hook_deleting_a_branch_with_slashes():
    body = load_payload("system_hook_push")
    body.update(ref="refs/heads/Feature/My_Branch", after=ZERO_SHA, checkout_sha=None, commits=[])
    assert parse_gitlab("System Hook", body, NOW) == PushEvent("mike/diaspora", "Feature/My_Branch", False,
                                                               True, "master")


@pytest.mark.parametrize(("after", "deleted"), [
    ("0" * 40, True),  # SHA-1
    ("0" * 64, True),  # SHA-256: GitLab's blank SHA has the repository's object format's length
    ("0" * 39 + "1", False),
    ("0" * 63 + "a", False),
    ("a" * 64, False),
    ("", False),
    (None, False),
    (0, False),
])
def test_a_branch_is_deleted_when_after_is_all_zeros_of_any_length(after, deleted):
    body = load_payload("push_event_branch_delete")
    body["after"] = after
    assert parse_gitlab("Push Hook", body, NOW).deleted is deleted
    assert is_zero_sha(after) is deleted


def test_tag_deletion_is_a_tag_event():
    body = load_payload("tag_push_event")
    body["after"] = ZERO_SHA
    event = parse_gitlab("Tag Push Hook", body, NOW)
    assert (event.is_tag, event.deleted) == (True, True)


def test_group_hooks_send_project_hook_payloads():
    # A group webhook delivers the same payloads and headers as a project webhook, for every project
    # of the group: the project is named by the payload.
    body = load_payload("merge_request_event_merge")
    body["project"]["path_with_namespace"] = "group/sub/app"
    event = parse_gitlab("Merge Request Hook", body, NOW)
    assert (event.project_path, event.action) == ("group/sub/app", "merge")


@pytest.mark.parametrize("name", ["system_hook_repository_update"])
def test_other_kinds_are_ignored_not_errors(name):
    assert parse_gitlab("System Hook", load_payload(name), NOW) == IgnoredEvent("repository_update")


@pytest.mark.parametrize(("header", "kind"), [("Job Hook", "build"), ("Note Hook", "note")])
def test_ignored_project_hook_kinds(header, kind):
    assert parse_gitlab(header, {"object_kind": kind}, NOW) == IgnoredEvent(kind)


# -- times ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2016-08-12 15:23:28 UTC", ts("2016-08-12T15:23:28")),
    ("2013-12-03T17:23:34Z", ts("2013-12-03T17:23:34")),
    ("2012-01-03T23:36:29+02:00", ts("2012-01-03T21:36:29")),
    ("2016-03-09T14:44:26.402973-08:00", ts("2016-03-09T22:44:26.402973")),
    ("2016-08-12T15:23:28", ts("2016-08-12T15:23:28")),
    ("not a time", NOW),
    ("", NOW),
    (None, NOW),
    (12, NOW),
])
def test_parse_time(text, expected):
    assert parse_time(text, NOW) == pytest.approx(expected)


# -- registry notifications -----------------------------------------------------------------------------

def seen(pushes):
    return [(p.repository, p.tag, p.digest, p.at) for p in pushes]


def _tagged(name, tag="mr-1"):
    envelope = load_payload(name)
    for event in envelope["events"]:
        event["target"]["tag"] = tag
    return envelope


@pytest.mark.parametrize("name", ["registry_notification_push_v1", "registry_notification_push_v2"])
def test_registry_envelopes_keep_manifest_pushes_of_tags_and_drop_blobs(name):
    pushes = parse_registry(_tagged(name), NOW)
    # three push events: one manifest, two layers (blobs); even tagged, blobs are not tags
    assert seen(pushes) == [("library/test", "mr-1", DIGEST, ts("2006-01-02T15:04:05"))]
    assert pushes[0].useragent == "test/0.1" and not pushes[0].by_janitor


def test_the_janitors_own_pushes_are_marked():
    envelope = _tagged("registry_notification_push_v2")
    envelope["events"][0]["request"]["useragent"] = "registry-janitor/0.1 python-requests/2.32"
    (push,) = parse_registry(envelope, NOW)
    assert push.by_janitor


@pytest.mark.parametrize("name", ["registry_notification_push_v1", "registry_notification_push_v2"])
def test_a_manifest_pushed_by_digest_is_no_tag_push(name):
    # the documented examples carry no tag: a push by digest (an index's children, say)
    assert parse_registry(load_payload(name), NOW) == []


def test_pulls_and_deletes_are_dropped():
    assert parse_registry(load_payload("registry_notification_pull_v2"), NOW) == []
    envelope = _tagged("registry_notification_push_v2")
    for event in envelope["events"]:
        event["action"] = "delete"
    assert parse_registry(envelope, NOW) == []


@pytest.mark.parametrize("media_type", [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
])
def test_every_manifest_kind_is_a_tag_push(media_type):
    envelope = _tagged("registry_notification_push_v2", "v")
    envelope["events"][0]["target"]["mediaType"] = media_type
    assert [p.tag for p in parse_registry(envelope, NOW)] == ["v"]


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop("target"),
    lambda e: e.update(target="library/test:mr-1"),
    lambda e: e["target"].pop("repository"),
    lambda e: e["target"].pop("digest"),
    lambda e: e["target"].update(tag=""),
    lambda e: e["target"].pop("mediaType"),
])
def test_incomplete_push_events_are_skipped(mutate):
    envelope = _tagged("registry_notification_push_v2")
    mutate(envelope["events"][0])
    assert parse_registry(envelope, NOW) == []


def test_push_event_without_timestamp_uses_arrival_time_and_junk_events_are_skipped():
    envelope = _tagged("registry_notification_push_v2")
    del envelope["events"][0]["timestamp"]
    envelope["events"].insert(0, "junk")
    assert seen(parse_registry(envelope, NOW)) == [("library/test", "mr-1", DIGEST, NOW)]


@pytest.mark.parametrize("envelope", [{}, {"events": {}}, {"events": None}, [], "x", None])
def test_envelope_without_an_events_list_is_malformed(envelope):
    with pytest.raises(MalformedEvent, match="events"):
        parse_registry(envelope, NOW)


# -- values GitLab never sends (SPEC 14): refused whole, naming the field -----------------------------

def _nest(depth):
    value = 1
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("depth", "deep"), [(0, False), (1, False), (20, False), (21, True), (500, True)])
def test_too_deep_counts_levels_of_objects_and_lists(depth, deep):
    assert too_deep(_nest(depth)) is deep


def test_documented_payloads_are_far_from_too_deep():
    for name in ("pipeline_event", "merge_request_event_merge", "push_event", "system_hook_merge_request",
                 "registry_notification_push_v2"):
        assert not too_deep(load_payload(name), 6)


@pytest.mark.parametrize("value", [2**63, 2**70, 0, -1, 1.0, 1e400, float("nan"), True, False, "1e3", " 7",
                                   "9" * 20, "\u0661", [1], {"id": 1}])
def test_ids_are_integers_from_1_to_2_63_minus_1(value):
    body = _with("pipeline_event", value, "object_attributes", "id")
    with pytest.raises(MalformedEvent, match=r"object_attributes\.id"):
        parse_gitlab("Pipeline Hook", body, NOW)


def test_the_largest_ids_are_read():
    body = _with("pipeline_event", MAX_ID, "object_attributes", "id")
    body["merge_request"]["iid"] = MAX_ID
    p = parse_gitlab("Pipeline Hook", body, NOW).pipeline
    assert (p.pipeline_id, p.mr_iid) == (MAX_ID, MAX_ID)


@pytest.mark.parametrize(("name", "value", "path"), [
    ("pipeline_event", [1], ("project", "default_branch")),
    ("pipeline_event", "x" * (MAX_TEXT + 1), ("object_attributes", "ref")),
    ("pipeline_event", "main\nCRITICAL forged", ("object_attributes", "ref")),
    ("pipeline_event", {"sha": 1}, ("object_attributes", "sha")),
    ("pipeline_event", "yes", ("object_attributes", "tag")),
    ("pipeline_event", [], ("merge_request",)),
    ("pipeline_event", 2**64, ("merge_request", "iid")),
    ("pipeline_event", 3.5, ("project", "id")),
    ("merge_request_event_merge", 2**64, ("object_attributes", "iid")),
    ("merge_request_event_merge", ["merged"], ("object_attributes", "state")),
    ("merge_request_event_merge", "a\x1b[2Jb", ("object_attributes", "source_branch")),
    ("merge_request_event_merge", "group/app", ("project",)),
    ("push_event", {"ref": 1}, ("ref",)),
    ("push_event", 7, ("project", "default_branch")),
])
def test_values_of_the_wrong_type_or_size_are_malformed_naming_the_field(name, value, path):
    header = {"pipeline_event": "Pipeline Hook", "merge_request_event_merge": "Merge Request Hook",
              "push_event": "Push Hook"}[name]
    with pytest.raises(MalformedEvent, match=re.escape(".".join(path))):
        parse_gitlab(header, _with(name, value, *path), NOW)


def test_a_payload_nested_deeper_than_gitlab_ever_does_is_malformed():
    with pytest.raises(MalformedEvent, match="deeper than"):
        parse_gitlab("Pipeline Hook", _with("pipeline_event", _nest(MAX_DEPTH), "builds"), NOW)


def test_a_merge_request_ref_beyond_63_bits_names_no_merge_request():
    assert merge_request_of_ref(f"refs/merge-requests/{2**63}/head") is None
    assert merge_request_of_ref(f"refs/merge-requests/{MAX_ID}/head") == MAX_ID
    assert merge_request_of_ref("refs/merge-requests/0/head") is None


@pytest.mark.parametrize(("field", "value"), [("mediaType", ["application/vnd.oci.image.manifest.v1+json"]),
                                              ("tag", 7), ("repository", ["a"]), ("digest", {"d": 1})])
def test_a_registry_push_field_that_is_no_string_is_malformed_naming_it(field, value):
    envelope = _tagged("registry_notification_push_v2")
    envelope["events"][0]["target"][field] = value
    with pytest.raises(MalformedEvent, match=re.escape(f"events[0].target.{field}")):
        parse_registry(envelope, NOW)
