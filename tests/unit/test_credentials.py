"""Which credential each feature needs (``daemon.domain.credentials``): values in, verdicts out."""

import pytest

from daemon.domain.credentials import actions_needed, api_verdict, describe_actions, missing_actions, registry_fix


@pytest.mark.parametrize(("method", "needed"), [
    ("auto", ("pull", "push", "delete")),
    ("placeholder", ("pull", "push", "delete")),
    ("oci", ("pull", "delete")),
    ("gitlab-api", ("pull",)),
])
def test_each_method_needs_its_actions(method, needed):
    assert actions_needed(method) == needed


def test_missing_actions_in_the_methods_order_and_a_wildcard_holds_all():
    assert missing_actions({"push"}, "auto") == ("pull", "delete")
    assert missing_actions({"pull", "push"}, "oci") == ("delete",)
    assert missing_actions({"pull"}, "gitlab-api") == ()
    assert missing_actions({"*"}, "placeholder") == ()
    assert missing_actions(set(), "oci") == ("pull", "delete")


def test_granted_actions_read_in_gitlabs_order():
    assert describe_actions({"delete", "pull", "push"}) == "pull,push,delete"
    assert describe_actions({"push", "*"}) == "push,*"
    assert describe_actions(frozenset()) == "nothing"


def test_the_fix_names_the_grant_and_what_to_give():
    assert registry_fix("group/app", "group/app/builder", {"pull", "push"}) == (
        "token for group/app gets pull,push on group/app/builder; give it the api scope and the Maintainer role")
    assert "a token of another project gets nothing here" in registry_fix("group/app", "group/app", set())


def test_api_scope_serves_everything():
    verdict = api_verdict(("api",), reads=True, writes=True)
    assert verdict.ok and verdict.text.startswith("api: reconcile, branch lookups, the gitlab-api method")


def test_read_api_serves_lookups_only():
    assert api_verdict(("read_api",), reads=True, writes=False).ok
    assert "hooks install and the gitlab-api method need api" in api_verdict(("read_api",), reads=True,
                                                                             writes=False).text
    assert not api_verdict(("read_api",), reads=False, writes=True).ok


@pytest.mark.parametrize("scopes", [("write_registry",), ("read_registry", "read_user"), None])
def test_a_token_without_api_access_fails_only_where_the_config_relies_on_it(scopes):
    relied = api_verdict(scopes, reads=True, writes=False)
    assert not relied.ok and "cannot call the GitLab API" in relied.text
    assert "set gitlab.api_token" in relied.text
    assert not api_verdict(scopes, reads=False, writes=True).ok
    spared = api_verdict(scopes, reads=False, writes=False)
    assert spared.ok and "gitlab.api_token serves the API" in spared.text


def test_insufficient_scope_is_said_as_gitlab_says_it():
    assert api_verdict(None, reads=True, writes=False).text.startswith("no API scope (403 insufficient_scope)")
