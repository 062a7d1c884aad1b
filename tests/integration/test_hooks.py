"""``registry-janitor hooks install|verify`` through python-gitlab against the stand-in's project hooks API."""

import gitlab as python_gitlab
import pytest
import yaml
from click.testing import CliRunner
from support.janitor import make_settings

from daemon.cli import main
from daemon.gitlab.hooks import HookSetupError, hook_url, same_url

URL = "https://janitor.example.com/webhooks/gitlab"
WANTED = {"push_events": True, "merge_requests_events": True, "pipeline_events": True}


def write_config(tmp_path, gitlab, projects, **gitlab_settings):
    path = tmp_path / "janitor.yaml"
    path.write_text(yaml.safe_dump({"gitlab": {"url": gitlab.url, "timeout": 5, **gitlab_settings},
                                    "storage": {"url": f"sqlite:///{tmp_path / 'janitor.db'}"},
                                    "projects": projects}))
    return str(path)


def entry(project, secret="s3cret-app", **extra):
    return {"path": project.path, "webhook_secret": secret, "registry_token": project.token, **extra}


def cli(config, *args, env=None):
    return CliRunner().invoke(main, ["hooks", *args, "--config", config], env=env or {})


def wanted_hook(hook, secret):
    return (hook.url == URL and hook.token == secret and hook.enable_ssl_verification
            and all(hook.events.get(k) for k in WANTED))


def test_install_creates_one_hook_and_a_second_run_updates_it(tmp_path, gitlab, project):
    config = write_config(tmp_path, gitlab, [entry(project)])

    first = cli(config, "install", "--project", project.path, "--url", "https://janitor.example.com/")
    assert first.exit_code == 0, first.output
    (hook,) = gitlab.hooks(project)
    assert wanted_hook(hook, "s3cret-app")
    assert f"{project.path}: created: hook {hook.id} for {URL}" in first.output

    hook.events["merge_requests_events"] = False  # someone unticked a box in GitLab's settings
    hook.enable_ssl_verification = False
    second = cli(config, "install", "--project", project.path, "--url", URL)
    assert second.exit_code == 0, second.output
    assert [h.id for h in gitlab.hooks(project)] == [hook.id]  # updated, never duplicated
    assert wanted_hook(gitlab.hooks(project)[0], "s3cret-app")
    assert f"updated: hook {hook.id} (was: merge_requests_events off; SSL verification off)" in second.output
    assert gitlab.calls["POST /api/v4/projects/:id/hooks"] == 1
    assert gitlab.calls["PUT /api/v4/projects/:id/hooks/:hook_id"] == 1


def test_install_sets_a_changed_secret_and_leaves_other_hooks_alone(tmp_path, gitlab, project):
    admin = python_gitlab.Gitlab(gitlab.url, private_token=gitlab.admin_token)
    other = admin.projects.get(project.path, lazy=True).hooks.create({"url": "https://chat.example.com/hook"})
    cli(write_config(tmp_path, gitlab, [entry(project)]), "install", "--project", project.path, "--url", URL)
    result = cli(write_config(tmp_path, gitlab, [entry(project, secret="rotated")]),
                 "install", "--project", project.path, "--url", URL)
    assert result.exit_code == 0, result.output
    hooks = {h.url: h for h in gitlab.hooks(project)}
    assert set(hooks) == {URL, "https://chat.example.com/hook"} and hooks[URL].token == "rotated"
    assert hooks["https://chat.example.com/hook"].id == other.id


def test_install_removes_duplicates_for_its_url(tmp_path, gitlab, project):
    hooks_api = python_gitlab.Gitlab(gitlab.url, private_token=gitlab.admin_token).projects.get(
        project.path, lazy=True).hooks
    for _ in range(3):
        hooks_api.create({"url": URL + "/", "push_events": True})
    result = cli(write_config(tmp_path, gitlab, [entry(project)]), "install", "--project", project.path,
                 "--url", URL)
    assert result.exit_code == 0, result.output
    (hook,) = gitlab.hooks(project)
    assert wanted_hook(hook, "s3cret-app")
    assert "2 duplicate hook(s) for this URL removed" in result.output


def test_dry_run_changes_nothing(tmp_path, gitlab, project):
    config = write_config(tmp_path, gitlab, [entry(project)])
    result = cli(config, "install", "--project", project.path, "--url", URL, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"{project.path}: would create: hook for {URL}" in result.output
    assert gitlab.hooks(project) == []
    cli(config, "install", "--project", project.path, "--url", URL)
    (hook,) = gitlab.hooks(project)
    hook.events["pipeline_events"] = False
    again = cli(config, "install", "--project", project.path, "--url", URL, "--dry-run")
    assert f"would update: hook {hook.id} (was: pipeline_events off)" in again.output
    assert gitlab.hooks(project)[0].events["pipeline_events"] is False
    calls = gitlab.calls
    assert calls["POST /api/v4/projects/:id/hooks"] == 1 and calls["PUT /api/v4/projects/:id/hooks/:hook_id"] == 0


def test_a_developer_token_is_told_that_maintainer_is_needed(tmp_path, gitlab, project):
    dev = gitlab.add_project(f"{project.path}-dev", role="developer")
    config = write_config(tmp_path, gitlab, [entry(project), entry(dev)])
    result = cli(config, "install", "--all", "--url", URL)
    assert result.exit_code == 1
    assert f"{dev.path}: error: GitLab refused (403)" in result.output and "needs the Maintainer role" in result.output
    assert len(gitlab.hooks(project)) == 1 and gitlab.hooks(dev) == []  # the other project still got its hook


def test_all_lists_group_entries_through_the_api(tmp_path, gitlab, project):
    group = project.path.split("/")[0]
    a, b = gitlab.add_project(f"{group}/a"), gitlab.add_project(f"{group}/sub/b")
    exact = gitlab.add_project(f"{group}/exact")
    config = write_config(tmp_path, gitlab, [{"path": f"{group}/*", "webhook_secret": "group-secret"},
                                             entry(exact, secret="exact-secret")],
                          api_token=gitlab.admin_token)
    result = cli(config, "install", "--all", "--url", URL)
    assert result.exit_code == 0, result.output
    assert "webhooks" in result.output  # the progress bar's label (on stderr, which the runner shows too)
    for p in (project, a, b):
        (hook,) = gitlab.hooks(p)
        assert wanted_hook(hook, "group-secret")
    (hook,) = gitlab.hooks(exact)
    assert wanted_hook(hook, "exact-secret")  # the exact entry's own secret, not the group's


def test_verify_reports_ok_missing_and_wrong(tmp_path, gitlab, project):
    missing = gitlab.add_project(f"{project.path}-missing")
    wrong = gitlab.add_project(f"{project.path}-wrong")
    config = write_config(tmp_path, gitlab, [entry(project), entry(missing), entry(wrong)])
    for p in (project, wrong):
        assert cli(config, "install", "--project", p.path, "--url", URL).exit_code == 0
    gitlab.hooks(wrong)[0].events["merge_requests_events"] = False

    result = cli(config, "verify", "--url", URL)

    assert result.exit_code == 1
    assert f"{project.path}: ok" in result.output
    assert f"{missing.path}: missing" in result.output
    assert f"{wrong.path}: wrong" in result.output and "merge_requests_events off" in result.output
    assert "1 OK, 2 not OK" in result.output
    cli(config, "install", "--all", "--url", URL)
    fixed = cli(config, "verify", "--url", URL)
    assert fixed.exit_code == 0 and "3 OK, 0 not OK" in fixed.output, fixed.output


def test_verify_spots_duplicates_a_branch_filter_and_ssl_off(tmp_path, gitlab, project):
    config = write_config(tmp_path, gitlab, [entry(project)])
    cli(config, "install", "--project", project.path, "--url", URL)
    (hook,) = gitlab.hooks(project)
    hook.push_events_branch_filter = "main"
    hook.enable_ssl_verification = False
    result = cli(config, "verify", "--url", URL)
    assert result.exit_code == 1
    assert "SSL verification off" in result.output and "only for branches matching 'main'" in result.output
    python_gitlab.Gitlab(gitlab.url, private_token=gitlab.admin_token).projects.get(
        project.path, lazy=True).hooks.create({"url": URL})
    assert "2 hooks for" in cli(config, "verify", "--url", URL).output


def test_install_needs_a_project_choice_and_a_reachable_url(tmp_path, gitlab, project):
    config = write_config(tmp_path, gitlab, [entry(project)])
    assert cli(config, "install").exit_code == 2
    assert cli(config, "install", "--project", "not/configured", "--url", URL).exit_code == 2
    no_url = cli(config, "install", "--all")  # server.bind 127.0.0.1 is fine: the stand-in is local too
    assert no_url.exit_code == 0 and "http://127.0.0.1:8080/webhooks/gitlab" in no_url.output
    from_env = cli(config, "verify", env={"JANITOR_URL": "https://j.example.org/base"})
    assert "https://j.example.org/base/webhooks/gitlab" in from_env.output


@pytest.mark.parametrize(("bind", "gitlab_url", "given", "env", "expected"), [
    ("127.0.0.1:8080", "https://gitlab.example.com", "https://j.example.com", {}, URL.replace("janitor", "j")),
    ("127.0.0.1:8080", "https://gitlab.example.com", None, {"JANITOR_URL": "https://j.example.com/"},
     "https://j.example.com/webhooks/gitlab"),
    ("10.0.0.5:8080", "https://gitlab.example.com", None, {}, "http://10.0.0.5:8080/webhooks/gitlab"),
    ("127.0.0.1:8080", "http://localhost:8929", None, {}, "http://127.0.0.1:8080/webhooks/gitlab"),
    ("0.0.0.0:8080", "https://gitlab.example.com", None, {}, HookSetupError),
    ("127.0.0.1:8080", "https://gitlab.example.com", None, {}, HookSetupError),
    ("127.0.0.1:8080", "https://gitlab.example.com", "janitor.example.com", {}, HookSetupError),
])
def test_hook_url(bind, gitlab_url, given, env, expected):
    settings = make_settings(server={"bind": bind}, gitlab={"url": gitlab_url})
    if expected is HookSetupError:
        with pytest.raises(HookSetupError, match=r"(?i)url"):
            hook_url(settings, given, env)
    else:
        assert hook_url(settings, given, env) == expected


def test_same_url_ignores_trailing_slash_and_host_case():
    assert same_url("https://J.example.com/webhooks/gitlab/", "https://j.example.com/webhooks/gitlab")
    assert not same_url("https://j.example.com/webhooks/gitlab", "http://j.example.com/webhooks/gitlab")
