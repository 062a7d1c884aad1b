"""``registry-janitor ci record|untag`` from a job's point of view, against a served janitor."""

from click.testing import CliRunner
from support.images import push_image, tags
from support.janitor import SECRET, registry_section
from support.servers import ServerThread

from daemon.cli import main


def test_a_job_records_its_push_and_untags_it(janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
                  "tags": [{"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    push_image(registry, project.path, ["feature-a", "keep"])
    token = gitlab.add_job(project, pipeline_id=77, ref="feature-a")
    image = f"{registry.host}/{project.path}:feature-a"
    runner = CliRunner()
    with ServerThread(j.app) as server:
        env = {"CI_JOB_TOKEN": token, "JANITOR_URL": server.url}
        first = runner.invoke(main, ["ci", "record", image], env=env)
        again = runner.invoke(main, ["ci", "record", image], env=env)
        foreign = runner.invoke(main, ["ci", "untag", f"{registry.host}/else/where:feature-a"], env=env)
        bad = runner.invoke(main, ["ci", "untag", image], env={**env, "CI_JOB_TOKEN": "nope"})
        untag = runner.invoke(main, ["ci", "untag", image], env=env)
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert first.output.startswith("201") and again.output.startswith("200")
    assert foreign.exit_code == 1 and foreign.output.startswith("403")
    assert bad.exit_code == 1 and bad.output.startswith("401")
    assert untag.exit_code == 0 and untag.output.startswith("202")
    j.tick()  # resolves the digest and runs the plan at once (no grace for CI requests)
    j.tick()
    assert tags(registry, project.path) == ["keep"]
