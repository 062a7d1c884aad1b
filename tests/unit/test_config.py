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
