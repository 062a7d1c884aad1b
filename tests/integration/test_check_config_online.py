"""``check-config --online`` judges each credential by what GitLab really grants it, against the real
registry and the GitLab stand-in (which grants and refuses as GitLab's source does): the actions the
token service puts in the registry token it issues, and the scopes ``/personal_access_tokens/self``
reports."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner, Result
from support.images import push_image
from support.janitor import ADMIN, SECRET

from daemon.cli import main
from daemon.demo.env import LocalRegistry, find_registry_binary
from daemon.gitlab.api import GitLabAPI, GitLabAPIError, insufficient_scope

Blocks = dict[str, list[list[str]]]


def check(tmp_path, projects: list[dict], **sections) -> tuple[Result, Blocks]:
    """Run ``check-config --online`` on a config of ``projects`` (each with the test's webhook secret);
    returns the result and its lines grouped by block (``gitlab.api_token`` or a project path), each line
    split into check, status and text."""
    raw = {"storage": {"url": f"sqlite:///{tmp_path / 'janitor.db'}"}, "server": {"admin_token": ADMIN},
           "projects": [{"webhook_secret": SECRET, **p} for p in projects], **sections}
    path = tmp_path / "janitor.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["check-config", "--online", "--config", str(path)])
    blocks: Blocks = {}
    current: list[list[str]] = []
    for line in result.output.split("online checks:\n", 1)[1].splitlines():
        if line.startswith(" "):
            current.append(line.split(None, 2))
        else:
            current = blocks.setdefault(line, [])
    return result, blocks


def line(blocks: Blocks, block: str, name: str) -> list[str]:
    (found,) = [entry for entry in blocks[block] if entry[0] == name]
    return found


def test_a_write_registry_token_fails_with_the_fix_and_an_api_maintainer_token_passes(tmp_path, gitlab, registry,
                                                                                      project):
    """The token the README once asked for (Developer, read_registry + write_registry) is granted pull and
    push, never delete, and cannot call the API; an api + Maintainer token is granted all three.

    GitLab: lib/gitlab/auth.rb (``abilities_for_scopes``: read_registry pull, write_registry push only),
    app/services/auth/container_registry_authentication_service.rb (``delete`` needs admin_container_image;
    actions not granted are silently left out), app/policies/project_policy.rb (admin_container_image is
    Maintainer's), lib/api/api_guard.rb (403 insufficient_scope for a registry-only token)."""
    old = gitlab.add_project(f"{project.path}-old", role="developer", scopes=("read_registry", "write_registry"))
    push_image(registry, project.path, ["mr-1"])
    result, blocks = check(tmp_path, [{"path": old.path, "registry_token": old.token},
                                      {"path": project.path, "registry_token": project.token}],
                           registry={"url": registry.url}, gitlab={"url": gitlab.url})
    assert result.exit_code == 1, result.output
    repo = old.path.lower()
    assert line(blocks, old.path, "registry") == [
        "registry", "FAILED", f"token for {old.path} gets pull,push on {repo}; give it the api scope and the "
                              "Maintainer role"]
    scopes = line(blocks, old.path, "scopes")
    assert scopes[:2] == ["scopes", "FAILED"]
    assert scopes[2].startswith("registry_token has read_registry,write_registry: cannot call the GitLab API")
    assert "set gitlab.api_token" in scopes[2]
    assert line(blocks, old.path, "gitlab")[:2] == ["gitlab", "FAILED"]
    assert "403" in line(blocks, old.path, "gitlab")[2]

    assert [entry[:2] for entry in blocks[project.path]] == [["gitlab", "ok"], ["scopes", "ok"], ["registry", "ok"]]
    assert line(blocks, project.path, "registry")[2] == f"{project.path.lower()}: token gets pull,push,delete, 1 tag(s)"
    assert line(blocks, project.path, "scopes")[2].startswith("registry_token has api: reconcile, branch lookups")

    alone, _ = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                     registry={"url": registry.url}, gitlab={"url": gitlab.url})
    assert alone.exit_code == 0, alone.output


@pytest.mark.parametrize(("role", "scopes", "granted"), [
    ("developer", ("api",), "pull,push"),
    ("maintainer", ("write_registry",), "push"),
    ("maintainer", ("read_api",), "pull"),
])
def test_every_token_short_of_api_and_maintainer_is_told_what_it_gets(tmp_path, gitlab, registry, project, role,
                                                                      scopes, granted):
    """Only the api scope with the Maintainer role is granted ``delete`` (app/policies/project_policy.rb,
    lib/gitlab/auth.rb); the others hear what they get, by the placeholder method's needs too (push)."""
    token = gitlab.add_token(project, role=role, scopes=scopes)
    result, blocks = check(tmp_path, [{"path": project.path, "registry_token": token}],
                           registry={"url": registry.url, "untag_method": "placeholder"}, gitlab={"url": gitlab.url})
    assert result.exit_code == 1, result.output
    assert line(blocks, project.path, "registry")[1:] == [
        "FAILED", f"token for {project.path} gets {granted} on {project.path.lower()}; give it the api scope and the "
                  "Maintainer role"]


def test_the_least_privilege_setup_passes(tmp_path, gitlab, registry, project):
    """A read_api token for the API (read-only: lib/gitlab/auth.rb ``read_only_authentication_abilities``)
    and each project's api + Maintainer token for writes: every check passes, and the read-only token
    is told what it cannot do."""
    reader = gitlab.add_token(project, role="reporter", scopes=("read_api",))
    result, blocks = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                           registry={"url": registry.url}, gitlab={"url": gitlab.url, "api_token": reader})
    assert result.exit_code == 0, result.output
    assert blocks["gitlab.api_token"] == [[
        "scopes", "ok", "gitlab.api_token has read_api: reconcile and branch lookups only; hooks install and the "
                        "gitlab-api method need api"]]
    assert line(blocks, project.path, "gitlab") == ["gitlab", "ok", f"project #{project.id} readable with "
                                                                    "gitlab.api_token"]
    assert [entry[:2] for entry in blocks[project.path]] == [["gitlab", "ok"], ["scopes", "ok"], ["registry", "ok"]]


def test_an_api_token_that_cannot_call_the_api_fails(tmp_path, gitlab, registry, project):
    """gitlab.api_token is what reconcile and branch lookups use: a registry-only token there fails
    (lib/api/api_guard.rb: 403 insufficient_scope), even though each project's own token is fine."""
    registry_only = gitlab.add_token(project, role="maintainer", scopes=("read_registry",))
    result, blocks = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                           registry={"url": registry.url}, gitlab={"url": gitlab.url, "api_token": registry_only})
    assert result.exit_code == 1, result.output
    ((name, status, text),) = blocks["gitlab.api_token"]
    assert (name, status) == ("scopes", "FAILED")
    assert text.startswith("gitlab.api_token has read_registry: cannot call the GitLab API")
    assert "a branch that cannot be looked up counts as live" in text
    assert line(blocks, project.path, "registry")[1] == "ok"


def test_the_gitlab_api_method_needs_the_api_scope_on_the_project_token(tmp_path, gitlab, registry, project):
    """With ``untag_method: gitlab-api`` GitLab deletes the tag through its API with the project's token
    (lib/api/project_container_repositories.rb), so a read_api token passes the registry (pull is all
    the janitor does there) and fails its scopes; gitlab.api_token set elsewhere does not help."""
    reader = gitlab.add_token(project, role="maintainer", scopes=("read_api",))
    result, blocks = check(tmp_path, [{"path": project.path, "registry_token": reader}],
                           registry={"url": registry.url, "untag_method": "gitlab-api"},
                           gitlab={"url": gitlab.url, "api_token": project.token})
    assert result.exit_code == 1, result.output
    assert line(blocks, project.path, "registry")[1] == "ok"
    scopes = line(blocks, project.path, "scopes")
    assert scopes[1] == "FAILED" and "registry.untag_method is gitlab-api: give it the api scope" in scopes[2]


def test_token_scopes_reads_gitlabs_own_record_of_the_token(gitlab, project):
    """``GET /personal_access_tokens/self`` answers any scope (lib/api/personal_access_tokens/
    self_information.rb), project access tokens included; the rest of the API refuses a registry-only
    token with 403 insufficient_scope (lib/api/api_guard.rb)."""
    api = GitLabAPI(gitlab.url)
    registry_only = gitlab.add_token(project, scopes=("read_registry", "write_registry"))
    assert api.token_scopes(project.token) == ("api",)
    assert api.token_scopes(registry_only) == ("read_registry", "write_registry")
    with pytest.raises(GitLabAPIError) as refused:
        api.check_project(project.path, registry_only)
    assert insufficient_scope(refused.value)
    with pytest.raises(GitLabAPIError) as unknown:
        api.token_scopes("glpat-not-a-token")
    assert unknown.value.status == 401 and not insufficient_scope(unknown.value)


def test_a_registry_without_auth_is_not_checked_and_says_so(tmp_path, gitlab, project):
    """A registry that asks for no token grants everything to everyone: there are no actions to read."""
    binary = find_registry_binary()
    assert binary is not None, "docker-registry is not installed"
    open_registry = LocalRegistry(binary, tmp_path).start()
    try:
        result, blocks = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                               registry={"url": open_registry.url}, gitlab={"url": gitlab.url})
    finally:
        open_registry.stop()
    assert result.exit_code == 0, result.output
    assert line(blocks, project.path, "registry") == [
        "registry", "ok", f"{project.path.lower()}: 0 tag(s); actions not checked: the registry asks for no token"]


def test_a_gitlab_that_cannot_say_the_scopes_leaves_them_unknown(tmp_path, gitlab, registry, project):
    """A GitLab without ``/personal_access_tokens/self`` (here: an address that answers 404 to every API
    call) leaves the scopes unknown, not failed; the project read fails on its own line."""
    result, blocks = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                           registry={"url": registry.url, "token_realms": [registry.realm]},
                           gitlab={"url": registry.url})
    assert result.exit_code == 1, result.output
    assert line(blocks, project.path, "gitlab")[1] == "FAILED"
    scopes = line(blocks, project.path, "scopes")
    assert scopes[1] == "unknown" and "answered 404" in scopes[2]
    assert line(blocks, project.path, "registry")[1] == "ok"


def test_a_token_service_off_gitlabs_host_is_refused_with_the_fix(tmp_path, gitlab, registry, project):
    """gitlab.url names GitLab otherwise than the registry's realm does (localhost, not 127.0.0.1): the
    project's token is not sent to that realm, and the registry line names the realm and how to allow it
    (SPEC 14); listed in registry.token_realms, it passes."""
    by_name = gitlab.url.replace("127.0.0.1", "localhost")
    result, blocks = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                           registry={"url": registry.url}, gitlab={"url": by_name})
    assert result.exit_code == 1, result.output
    assert line(blocks, project.path, "gitlab")[1] == "ok"
    assert line(blocks, project.path, "registry") == [
        "registry", "FAILED", f"the registry's token service {gitlab.realm} is not on gitlab.url's host "
                              f"({by_name.removeprefix('http://')}); add it to registry.token_realms if it is yours "
                              f"(the project's registry_token was not sent to it); the registry at {registry.url} "
                              "names it in its challenge"]
    assert gitlab.calls["GET /jwt/auth"] == 0

    listed, blocks = check(tmp_path, [{"path": project.path, "registry_token": project.token}],
                           registry={"url": registry.url, "token_realms": [gitlab.realm]}, gitlab={"url": by_name})
    assert listed.exit_code == 0, listed.output
    assert line(blocks, project.path, "registry")[1] == "ok"
    assert gitlab.calls["GET /jwt/auth"] == 1
