"""Config: YAML, ${VAR}, *_file secrets, every error at once with its key path (the exit code of
the check-config process: tests/e2e/test_check_config_process.py)."""

import pickle
from pathlib import Path

import pytest

from daemon.config import STORAGE_SCHEMES, load_settings, settings_from_dict
from daemon.domain.patterns import Duration, format_duration
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


# -- what check-config passes, run can start: URLs, bind, storage, paths, durations ---------------------

def _problems(raw):
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, environ={})
    return info.value.problems


@pytest.mark.parametrize(("section", "url", "why"), [
    ("gitlab", "not-a-url", "is not an http(s) URL, e.g. https://gitlab.example.com"),
    ("gitlab", "gitlab.example.com", "is not an http(s) URL"),
    ("gitlab", "ftp://gitlab.example.com", "is not an http(s) URL"),
    ("gitlab", "https://", "is not an http(s) URL"),
    ("gitlab", "https://gitlab.example.com:99999", "port must be a number from 1 to 65535"),
    ("gitlab", "https://gitlab.example.com:http", "port must be a number from 1 to 65535"),
    ("gitlab", "https://gitlab.example.com:0", "names port 0"),
    ("gitlab", "https://gitlab example.com", "must be a plain URL"),
    ("gitlab", "https://gitlab.example.com/?private_token=x", "no ?query or #fragment"),
    ("gitlab", "https://gitlab.example.com/#top", "no ?query or #fragment"),
    ("gitlab", "https://gitlab_.example..com", "is not a host name or IP address"),
    ("gitlab", "https://[::1/", "is not a URL"),
    ("registry", "http://127.0.0.1:99999", "e.g. https://registry.example.com"),
    ("registry", "registry:5000", "is not an http(s) URL"),
    ("registry", "https://user@registry.example.com", "no user info"),
])
def test_a_service_url_that_would_crash_run_is_an_error_with_its_key(section, url, why):
    [problem] = _problems({section: {"url": url}})
    assert problem.startswith(f"{section}.url: {url!r} ") and why in problem, problem


def test_a_password_in_a_url_is_not_repeated():
    [problem] = _problems({"gitlab": {"url": "https://root:hunter2@gitlab.example.com"}})
    assert problem.startswith("gitlab.url:") and "hunter2" not in problem and "gitlab.api_token" in problem


@pytest.mark.parametrize("url", ["https://gitlab.example.com", "http://127.0.0.1:8929", "https://example.com/gitlab/",
                                 "http://[::1]:8929", "https://gitlab.example.com.:443", "http://my_registry:5000"])
def test_service_urls_gitlab_and_registries_use_are_accepted(url):
    s = settings_from_dict({"gitlab": {"url": url}, "registry": {"url": url}}, environ={})
    assert (s.gitlab.url, s.registry.url) == (url, url)


@pytest.mark.parametrize(("bind", "why"), [
    ("127.0.0.1:99999", "a port is a number from 1 to 65535"),
    ("127.0.0.1:0", "a port is a number from 1 to 65535"),
    ("127.0.0.1", "is not host:port"),
    ("127.0.0.1:", "is not host:port"),
    ("127.0.0.1:80a", "a port is a number from 1 to 65535"),
    ("::1:8080", "needs brackets around an IPv6 address"),
    ("[::g]:8080", "is not an IPv6 address"),
    ("bad host:8080", "is not a host name or IP address"),
    ("unix:", "names no socket file"),
    ("fd://x", "names no file descriptor"),
])
def test_a_bind_that_would_crash_run_is_an_error(bind, why):
    [problem] = _problems({"server": {"bind": bind}})
    assert problem.startswith(f"server.bind: {bind!r} ") and why in problem and "127.0.0.1:8080" in problem, problem


@pytest.mark.parametrize("bind", ["127.0.0.1:8080", "0.0.0.0:1", "[::]:65535", "[::1]:8080", ":8080",
                                  "janitor.example.org:80", "localhost:8080", "unix:/run/janitor.sock", "fd://3"])
def test_binds_gunicorn_listens_on_are_accepted(bind):
    assert settings_from_dict({"server": {"bind": bind}}, environ={}).server.bind == bind


@pytest.mark.parametrize("url", ["mysql://db/janitor", "sqlite://janitor.db", "sqlite:///", "sqlite:///data/",
                                 "data/janitor.db", "SQLITE:///x.db"])
def test_a_storage_url_the_janitor_cannot_open_is_an_error(url):
    [problem] = _problems({"storage": {"url": url}})
    assert problem.startswith(f"storage.url: {url!r} ") and "sqlite:///" in problem, problem


@pytest.mark.parametrize(("url", "why"), [
    ("postgresql://db", "names no database"), ("postgres://db:port/j", "is not a PostgreSQL URL"),
    ("postgresql://db/j#x", "#fragment"), ("postgresql://db/j?sslmode", "is not key=value"),
    ("postgresql://db/j x", "white space"),
])
def test_a_postgresql_url_the_janitor_cannot_use_is_an_error_saying_what_to_write(url, why):
    [problem] = _problems({"storage": {"url": url}})
    assert problem.startswith("storage.url: ") and why in problem, problem


def test_a_postgresql_url_is_a_storage_url():
    settings = settings_from_dict({"storage": {"url": "postgres://j@db:5432/j?sslmode=verify-full"}}, environ={})
    assert settings.storage.is_postgres and settings.storage.password_value is None


@pytest.mark.parametrize("name", ["https://registry.example.com", "registry.example.com/v2", "reg istry",
                                  "registry.example.com:99999", "registry.example.com:", "::1"])
def test_a_registry_hostname_that_no_image_reference_holds_is_an_error(name):
    [problem] = _problems({"registry": {"hostnames": [name]}})
    assert problem.startswith(f"registry.hostnames: {name!r}") and "registry.example.com:5050" in problem


def test_registry_hostnames_with_ports_are_accepted():
    names = ["registry.example.com", "127.0.0.1:5000", "[::1]:5000"]
    assert settings_from_dict({"registry": {"hostnames": names}}, environ={}).registry.hostnames == tuple(names)


def test_every_problem_of_a_config_is_reported_at_once():
    problems = _problems({"gitlab": {"url": "not-a-url"}, "server": {"bind": "127.0.0.1:99999"},
                          "storage": {"url": "mysql://x"},
                          "projects": [{"path": "group/app", "webhook_secret": "a"},
                                       {"path": "group/my app", "webhook_secret": "b"},
                                       {"path": "Group/App", "webhook_secret": "c"}]})
    assert [p.split(":", 1)[0] for p in problems] == ["gitlab.url", "storage.url", "server.bind",
                                                      "projects[1].path", "projects[2].path"]
    assert "is already configured at projects[0]" in problems[-1]


def test_the_same_project_path_twice_names_both_entries():
    problems = _problems({"projects": [{"path": "group/app", "webhook_secret": "a"},
                                       {"path": "other/app", "webhook_secret": "b"},
                                       {"path": "other/lib", "webhook_secret": "c"},
                                       {"path": "Group/App", "webhook_secret": "d"}]})
    assert problems == ["projects[3].path: 'Group/App' is already configured at projects[0] as 'group/app'"
                        " (GitLab paths ignore case): keep one entry"]


@pytest.mark.parametrize("path", ["group/my app", "my group/app", "group/app ", " group/app", "group/my\tapp"])
def test_a_project_path_with_white_space_is_an_error(path):
    [problem] = _problems({"projects": [{"path": path, "webhook_secret": "a"}]})
    assert problem.startswith("projects[0].path:") and "no GitLab project path" in problem, problem


def test_a_bad_default_is_reported_once_at_defaults_and_a_projects_own_at_the_project():
    problems = _problems({"defaults": {"grace_period": "5x", "max_tags_per_plan": 0, "colour": "blue"},
                          "projects": [{"path": "g/a", "webhook_secret": "a"},
                                       {"path": "g/b", "webhook_secret": "b", "grace_period": "soon"},
                                       {"path": "g/c", "webhook_secret": "c", "max_tags_per_plan": 5}]})
    assert sorted(p.split(":", 1)[0] for p in problems) == [
        "defaults.colour", "defaults.grace_period", "defaults.max_tags_per_plan", "projects[1].grace_period"]
    assert [p for p in problems if p.startswith("defaults.grace_period:")] == [
        "defaults.grace_period: '5x' is not a duration; write it like 30s, 15m, 2h, 7d or 1h30m"
        " (units w, d, h, m, s, each once, largest first)"]


def test_good_defaults_still_reach_every_project_that_does_not_set_the_key():
    s = settings_from_dict({"defaults": {"grace_period": "1h30m"},
                            "projects": [{"path": "g/a", "webhook_secret": "a"},
                                         {"path": "g/b", "webhook_secret": "b", "grace_period": "14d"}]}, environ={})
    assert [(p.grace_period, format_duration(p.grace_period)) for p in s.projects] == [(5400, "1h30m"),
                                                                                       (1209600, "14d")]


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h30m", 5400), ("2d12h", 216000), ("1m30s", 90), ("1w1d", 691200), ("1d1h1m1s", 90061), ("1h 30m", 5400),
    ("90m", 5400), ("1.5h", 5400), ("0s", 0), ("14d", 1209600), (" 15m ", 900), (5400, 5400), (0.5, 0.5),
])
def test_durations_parse_single_and_compound(text, seconds):
    s = settings_from_dict({"projects": [{"path": "g/a", "webhook_secret": "a", "grace_period": text,
                                          "tags": [{"pattern": "p-$CI_PIPELINE_ID", "ttl": text}]}]}, environ={})
    assert s.projects[0].grace_period == seconds and s.projects[0].tags[0].ttl == seconds


@pytest.mark.parametrize("text", ["30m1h", "1h1h", "1h30", "h30m", "1h-30m", "-1h", "1h30mx", "1y", "15", "",
                                  "1:30", "1h30m!", "1e3s", "½h", -5, float("nan"), float("inf"), True, [1]])
def test_a_duration_that_is_not_one_is_an_error(text):
    [problem] = _problems({"projects": [{"path": "g/a", "webhook_secret": "a", "grace_period": text}]})
    assert problem.startswith("projects[0].grace_period:"), problem


@pytest.mark.parametrize("key", ["poll_interval", "reconcile_interval", "stuck_pipeline_after"])
@pytest.mark.parametrize("value", ["0s", 0, "0h0m"])
def test_a_worker_interval_of_no_time_is_an_error(key, value):
    [problem] = _problems({"worker": {key: value}})
    assert problem.startswith(f"worker.{key}:") and "longer than 0s" in problem


def test_durations_print_as_written_and_others_in_the_largest_units():
    s = settings_from_dict({"worker": {"poll_interval": "90s", "reconcile_interval": 600},
                            "projects": [{"path": "g/a", "webhook_secret": "a", "grace_period": "14d"}]}, environ={})
    assert format_duration(s.projects[0].grace_period) == "14d"
    assert format_duration(s.worker.poll_interval) == "90s"  # not 1m30s: as written
    assert format_duration(s.worker.reconcile_interval) == "600s"
    assert format_duration(s.worker.stuck_pipeline_after) == "1d"  # the default, as the README gives it
    assert format_duration(s.projects[0].grace_period + 0) == "14d"  # arithmetic gives plain seconds
    assert [format_duration(n) for n in (5400, 1209600, 90.5, 0, 0.25, 86461)] == [
        "1h30m", "14d", "1m30.5s", "0s", "0.25s", "1d1m1s"]
    assert pickle.loads(pickle.dumps(s)).projects[0].grace_period.text == "14d"
    assert type(s.model_copy(deep=True).projects[0].grace_period) is Duration


def test_a_relative_sqlite_path_is_relative_to_the_config_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "hook").write_text("hook-secret\n")
    config = folder / "janitor.yaml"
    config.write_text("storage: {url: 'sqlite:///state/janitor.db'}\n"
                      "projects: [{path: g/a, webhook_secret_file: hook}]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings("../etc/janitor.yaml", environ={})
    assert Path(s.storage.sqlite_path) == folder.resolve() / "state" / "janitor.db"
    assert s.projects[0].webhook_secret.get_secret_value() == "hook-secret"  # the same rule
    absolute = f"sqlite:///{tmp_path / 'abs.db'}"
    config.write_text(f"storage: {{url: '{absolute}'}}\n")
    assert load_settings(config, environ={}).storage.url == absolute
    config.write_text("gitlab: {timeout: 5}\n")
    assert Path(load_settings(config, environ={}).storage.sqlite_path) == folder.resolve() / "data" / "janitor.db"
    # settings that come from no file: the current folder, as before
    assert settings_from_dict({"storage": {"url": "sqlite:///x.db"}}, environ={}).storage.url == "sqlite:///x.db"


def test_storage_schemes_are_checked_in_one_table():
    assert set(STORAGE_SCHEMES) == {"sqlite", "postgresql", "postgres"}
    assert STORAGE_SCHEMES["sqlite"]("sqlite:///data/janitor.db") is None
    assert STORAGE_SCHEMES["postgresql"]("postgresql://j@db:5432/janitor?sslmode=verify-full") is None


def _project_for_by_scan(projects, path):
    """``Settings.project_for`` by its definition, entry by entry: what its index must answer."""
    path = path.lower()
    exact = [e for e in projects if not e.is_wildcard and e.base == path]
    if exact:
        return exact[0]
    if any(e.base.startswith(path + "/") or (e.is_wildcard and e.base == path) for e in projects):
        return None
    above = [e for e in projects if path.startswith(e.base + "/")]
    if any(not e.is_wildcard for e in above):
        return None
    return max(above, key=lambda e: len(e.base), default=None)


def test_project_for_answers_as_a_scan_of_every_entry_would():
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    segment = st.sampled_from(["a", "b", "B", "c"])
    entry_path = st.lists(segment, min_size=2, max_size=4).map("/".join)
    entries = st.lists(st.tuples(entry_path, st.booleans()), min_size=1, max_size=6)

    @hsettings(max_examples=300, deadline=None)
    @given(entries, st.lists(st.lists(segment, min_size=2, max_size=5).map("/".join), min_size=1, max_size=8))
    def check(raw, paths):
        projects = [{"path": p + ("/*" if wild else ""), "webhook_secret": f"s{i}"} for i, (p, wild) in enumerate(raw)]
        try:
            s = settings_from_dict({"projects": projects}, environ={})
        except ConfigError:
            return
        for path in paths + [e.path.removesuffix("/*") for e in s.projects]:
            assert s.project_for(path) is _project_for_by_scan(s.projects, path), path

    check()
