"""Config: YAML, ${VAR}, *_file secrets, every error at once with its key path (the exit code of
the check-config process: tests/e2e/test_check_config_process.py)."""

from pathlib import Path

import pytest

from daemon.config import load_settings, settings_from_dict
from daemon.errors import ConfigError

MINIMAL = {"projects": [{"path": "group/app", "webhook_secret": "s3cret"}]}


def test_defaults_apply_to_every_project_and_project_keys_win():
    s = settings_from_dict({
        "defaults": {"grace_period": "1m", "dry_run": False},
        "projects": [{"path": "g/a", "webhook_secret": "x"},
                     {"path": "g/b", "webhook_secret": "y", "grace_period": "2h"}],
    }, environ={})
    assert [p.grace_period for p in s.projects] == [60, 7200]
    assert [p.dry_run for p in s.projects] == [False, False]


def test_new_projects_default_to_dry_run():
    assert settings_from_dict(MINIMAL, environ={}).projects[0].dry_run is True


def test_env_and_file_secrets(tmp_path):
    secret = tmp_path / "hook"
    secret.write_text("from-file\n")
    s = settings_from_dict({"server": {"admin_token": "${ADMIN}"},
                            "projects": [{"path": "g/a", "webhook_secret_file": str(secret)}]},
                           environ={"ADMIN": "from-env"})
    assert s.server.admin_token.get_secret_value() == "from-env"
    assert s.projects[0].webhook_secret.get_secret_value() == "from-file"
    assert "from-env" not in repr(s) and "from-file" not in repr(s)


def test_every_error_is_reported_with_its_key_path():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({
            "registry": {"untag_method": "nuke", "burst": 0},
            "server": {"admin_token": "${MISSING}"},
            "worker": {"poll_interval": "soon"},
            "colour": "blue",
            "projects": [{"path": "g/a", "webhook_secret": "x",
                          "tags": [{"pattern": "x-$CI_JOB_ID", "lifetime": "branch"},
                                   {"pattern": "y", "lifetime": "forever"},
                                   {"pattern": "z"}],
                          "protected_tags": ["("]}],
        }, environ={})
    problems = "\n".join(info.value.problems)
    for path in ("registry.untag_method", "registry.burst", "server.admin_token", "worker.poll_interval",
                 "colour: unknown key", "projects[0].tags[0].pattern", "projects[0].tags[1].lifetime",
                 "projects[0].tags[2]", "projects[0].protected_tags"):
        assert path in problems, path
    assert "MISSING" in problems


def test_group_wildcard_and_exact_entries():
    s = settings_from_dict({"projects": [{"path": "grp/*", "webhook_secret": "a"},
                                         {"path": "grp/app", "webhook_secret": "b"}]}, environ={})
    assert s.project_for("grp/app").webhook_secret.get_secret_value() == "b"
    assert s.project_for("grp/sub/other").webhook_secret.get_secret_value() == "a"
    assert s.project_for("elsewhere/app") is None


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"janitor\.example\.yaml"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_example_config_is_valid_with_its_variables_set():
    env = {k: "x" for k in ("GITLAB_API_TOKEN", "GITLAB_SYSTEM_HOOK_SECRET", "JANITOR_ADMIN_TOKEN",
                            "JANITOR_REGISTRY_TOKEN", "APP_WEBHOOK_SECRET", "APP_REGISTRY_TOKEN")}
    s = load_settings(Path(__file__).resolve().parents[2] / "config" / "janitor.example.yaml", environ=env)
    assert s.projects[0].repositories("group/app") == ("group/app", "group/app/builder")
    assert s.worker.reconcile_interval == 600


def test_tag_patterns_keep_their_braced_ci_variables():
    s = settings_from_dict({"projects": [{"path": "g/a", "webhook_secret": "x", "tags": [
        {"pattern": "cache-${CI_PIPELINE_ID}", "lifetime": "pipeline"}]}]}, environ={})
    assert s.projects[0].tags[0].pattern == "cache-${CI_PIPELINE_ID}"


# -- project paths (SPEC 14): valid GitLab paths; the longest configured match wins --------------------

GROUP_AND_APP = {"projects": [{"path": "grpz/*", "webhook_secret": "group"},
                              {"path": "grpz/app", "webhook_secret": "app"}]}


def _secret_for(settings, path):
    entry = settings.project_for(path)
    return None if entry is None else entry.webhook_secret.get_secret_value()


@pytest.mark.parametrize("path", ["grpz/app/sub", "grpz/app/sub/deeper", "GRPZ/App/sub", "grpz/APP/x"])
def test_a_wildcard_never_covers_a_path_below_an_exactly_configured_project(path):
    """GitLab cannot hold a project below a project: ``grpz/app/sub`` names ``grpz/app``'s ``sub`` image."""
    assert _secret_for(settings_from_dict(GROUP_AND_APP, environ={}), path) is None


@pytest.mark.parametrize("path", ["grpz/app", "GRPZ/App", "grpz/APP"])
def test_an_exact_entry_owns_its_path_in_any_case(path):
    """GitLab paths are unique whatever their case: ``grpz/App`` is ``grpz/app``, never the group's."""
    assert _secret_for(settings_from_dict(GROUP_AND_APP, environ={}), path) == "app"


def test_the_longest_wildcard_wins_and_a_configured_group_is_no_project():
    s = settings_from_dict({"projects": [{"path": "grpz/*", "webhook_secret": "group"},
                                         {"path": "grpz/sub/*", "webhook_secret": "sub"},
                                         {"path": "grpz/sub/app", "webhook_secret": "app"}]}, environ={})
    assert _secret_for(s, "grpz/sub/other") == "sub"
    assert _secret_for(s, "grpz/sub/deep/other") == "sub"
    assert _secret_for(s, "grpz/subx/other") == "group"
    assert _secret_for(s, "grpz/other") == "group"
    assert _secret_for(s, "grpz/sub/app") == "app"
    # grpz/sub is a group (grpz/sub/* says so): no project of grpz/* may claim its repositories
    assert _secret_for(s, "grpz/sub") is None
    assert _secret_for(s, "GRPZ/Sub") is None


@pytest.mark.parametrize("path", [
    "grpz/x/../app", "grpz/../grpz/app", "grpz/./app", "grpz//app", "/grpz/app", "grpz/app/",
    "grpz/app\n", "grpz/app\nCRITICAL forged", "grpz/app\r", "grpz/ap p", "grpz/app\t", "grpz/äpp",
    "grpz/-app", "grpz/app-", "grpz/.app", "grpz/app.", "grpz/a..pp", "grpz/app.git", "grpz/app.atom",
    "grpz/app*", "grpz/*", "grpz/a?p", "grpz/a%2fb", "grpz/a\\b", "grpz/a:b", "grpz/a@b", "grpz/a\x00b",
    "grpz", "", "grpz/" + "a" * 256, "grpz/" + "/".join(["g"] * 21) + "/app",
])
def test_an_invalid_gitlab_path_matches_no_entry(path):
    s = settings_from_dict({"projects": [{"path": "grpz/*", "webhook_secret": "group"}]}, environ={})
    assert s.project_for(path) is None


@pytest.mark.parametrize("path", [
    "grpz/app", "grpz/App_1.x-y", "grpz/_app", "grpz/a-b/c_d/e.f", "grpz/" + "a" * 255,
    "grpz/" + "/".join(["g"] * 20) + "/app",
])
def test_a_valid_gitlab_path_below_the_group_matches_the_wildcard(path):
    s = settings_from_dict({"projects": [{"path": "grpz/*", "webhook_secret": "group"}]}, environ={})
    assert _secret_for(s, path) == "group"


@pytest.mark.parametrize("path", [
    "grpz/../app", "grpz/app\n", "grpz/a..b", "grpz/-app", "grpz/app.", "grpz/app.git", "grpz", "*",
    "grpz/a*", "grpz/*/app", "*/app", "grpz/**", "grpz/ap p",
])
def test_a_configured_path_must_be_a_gitlab_project_path_or_group_wildcard(path):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"projects": [{"path": "ok/app", "webhook_secret": "a"},
                                         {"path": path, "webhook_secret": "b"}]}, environ={})
    assert any(p.startswith("projects[1].path:") and "GitLab" in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(("first", "second"), [
    ("grpz/app", "grpz/app/sub"),
    ("grpz/app", "grpz/app/*"),
    ("grpz/app", "GRPZ/App"),
    ("grpz/*", "grpz/*"),
    ("grpz/*", "Grpz/*"),
    ("grpz/app", "grpz/app/sub/*"),
])
def test_entries_gitlab_could_not_hold_together_are_config_errors(first, second):
    """A path below a project is no project (GitLab has no such place); the same path twice has no owner."""
    for order in ((first, second), (second, first)):
        with pytest.raises(ConfigError) as info:
            settings_from_dict({"projects": [{"path": order[0], "webhook_secret": "a"},
                                             {"path": order[1], "webhook_secret": "b"}]}, environ={})
        assert any(p.startswith("projects[1].path:") for p in info.value.problems), info.value.problems


def test_a_wildcard_projects_scope_excludes_the_repositories_of_more_specific_entries():
    """S6 for every path a ``group/*`` entry answers for: none of its repositories is one of the exact
    project's, or one below the more specific group."""
    from hypothesis import given
    from hypothesis import strategies as st

    from daemon.domain.policy import in_scope
    from daemon.plan.planning import policy_for

    s = settings_from_dict({"projects": [
        {"path": "grpz/*", "webhook_secret": "group", "images": ["*"]},
        {"path": "grpz/app", "webhook_secret": "app", "images": ["*"]},
        {"path": "grpz/team/*", "webhook_secret": "team", "images": ["*"]}]}, environ={})
    group = s.projects[0]
    segment = st.sampled_from(["app", "App", "APP", "team", "Team", "sub", "x", "..", ".", "", "a.b", "-a"])
    owned = ["grpz/app", "grpz/app/sub", "grpz/app/sub/x", "grpz/team/lib", "grpz/team/lib/img", "grpz/team"]

    @given(st.lists(segment, min_size=1, max_size=4), st.sampled_from(["grpz", "GRPZ", "Grpz"]))
    def check(rest, head):
        path = "/".join([head, *rest])
        if s.project_for(path) is not group:
            return
        policy = policy_for(group, path, None)
        assert not any(in_scope(repository, policy) for repository in owned), path

    check()


# -- placeholder secrets: refused unless the server listens on loopback only --------------------------

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "janitor.yaml"
PLACEHOLDERS = {
    "gitlab": {"system_hook_secret": "change-me-system"},
    "server": {"admin_token": "change-me-admin", "registry_notification_token": "CHANGE-ME"},
    "projects": [{"path": "g/a", "webhook_secret": "change-me-webhook", "registry_token": "changeme"},
                 {"path": "g/b", "webhook_secret": "a-real-one"}],
}
PLACEHOLDER_KEYS = {"gitlab.system_hook_secret": "change-me-system", "server.admin_token": "change-me-admin",
                    "server.registry_notification_token": "CHANGE-ME",
                    "projects[0].webhook_secret": "change-me-webhook", "projects[0].registry_token": "changeme"}


@pytest.mark.parametrize("bind", ["0.0.0.0:8080", "[::]:8080", ":8080", "10.1.2.3:8080", "janitor.example.org:80",
                                  "unix:/run/janitor.sock"])
def test_placeholder_secrets_are_refused_on_a_non_loopback_bind(bind):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({**PLACEHOLDERS, "server": {**PLACEHOLDERS["server"], "bind": bind}}, environ={})
    problems = info.value.problems
    for key, value in PLACEHOLDER_KEYS.items():
        [problem] = [p for p in problems if p.startswith(f"{key}:")]
        assert "placeholder" in problem and bind in problem and "loopback" in problem, problem
        assert value not in problem, "the message never repeats a secret"
    assert not any(p.startswith("projects[1]") for p in problems)


@pytest.mark.parametrize("bind", ["127.0.0.1:8080", "127.0.0.2:9000", "localhost:8080", "[::1]:8080"])
def test_placeholder_secrets_are_accepted_on_a_loopback_bind(bind):
    s = settings_from_dict({**PLACEHOLDERS, "server": {**PLACEHOLDERS["server"], "bind": bind}}, environ={})
    assert s.server.admin_token.get_secret_value() == "change-me-admin"


def test_the_repos_config_says_which_variable_to_set_once_it_listens_beyond_loopback():
    with pytest.raises(ConfigError) as info:
        load_settings(REPO_CONFIG, environ={"JANITOR_BIND": "0.0.0.0:8080"})
    problems = "\n".join(info.value.problems)
    for key, var in (("server.admin_token", "JANITOR_ADMIN_TOKEN"),
                     ("server.registry_notification_token", "JANITOR_REGISTRY_TOKEN"),
                     ("projects[0].webhook_secret", "APP_WEBHOOK_SECRET")):
        assert f"{key}:" in problems and var in problems, (key, problems)
    own = {"JANITOR_BIND": "0.0.0.0:8080", "JANITOR_ADMIN_TOKEN": "a" * 32, "JANITOR_REGISTRY_TOKEN": "b" * 32,
           "APP_WEBHOOK_SECRET": "c" * 32}
    assert load_settings(REPO_CONFIG, environ=own).server.bind == "0.0.0.0:8080"
    assert load_settings(REPO_CONFIG, environ={}).server.bind == "127.0.0.1:8080"  # the README's walkthrough


def test_a_placeholder_read_from_a_file_names_the_file_key(tmp_path):
    (tmp_path / "hook").write_text("change-me\n")
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"server": {"bind": "0.0.0.0:8080"},
                            "projects": [{"path": "g/a", "webhook_secret_file": str(tmp_path / "hook")}]},
                           environ={}, base=tmp_path)
    [problem] = info.value.problems
    assert problem.startswith("projects[0].webhook_secret:") and "webhook_secret_file" in problem
