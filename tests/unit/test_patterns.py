"""Tag patterns and GitLab's ref slug, as tables of inputs and outputs."""

import pytest

from daemon.config import DEFAULT_PROTECTED
from daemon.domain.patterns import PipelineVars, expand, is_protected, parse_duration, ref_slug, validate_pattern


@pytest.mark.parametrize(("ref", "slug"), [
    ("main", "main"),
    ("Feature/My_Branch", "feature-my-branch"),
    ("feat/ABC-123_fix.thing", "feat-abc-123-fix-thing"),
    ("--leading/and/trailing--", "leading-and-trailing"),
    ("ümlaut", "mlaut"),
    ("a" * 70, "a" * 63),
    ("x" * 62 + "/y", "x" * 62),  # the cut lands on '-', which is then stripped
    ("v1.2.3", "v1-2-3"),
])
def test_ref_slug_follows_gitlab(ref, slug):
    assert ref_slug(ref) == slug


BRANCH = PipelineVars(ref="Feature/X_y", sha="0123456789abcdef" * 2 + "01234567", pipeline_id=31,
                      pipeline_iid=3)
MR = PipelineVars(ref="feature/x", sha="a" * 40, pipeline_id=40, pipeline_iid=4, mr_iid=42)
TAG = PipelineVars(ref="v1.0.0", sha="b" * 40, pipeline_id=50, is_tag=True)


@pytest.mark.parametrize(("pattern", "pipeline", "tag"), [
    ("mr-$CI_MERGE_REQUEST_IID", MR, "mr-42"),
    ("mr-${CI_MERGE_REQUEST_IID}", MR, "mr-42"),
    ("mr-$CI_MERGE_REQUEST_IID", BRANCH, None),  # no MR: expands to nothing
    ("$CI_COMMIT_REF_SLUG", BRANCH, "feature-x-y"),
    ("$CI_COMMIT_BRANCH", BRANCH, None),  # '/' is not valid in a tag
    ("$CI_COMMIT_BRANCH", MR, None),  # MR pipelines have no CI_COMMIT_BRANCH
    ("$CI_COMMIT_TAG", TAG, "v1.0.0"),
    ("$CI_COMMIT_TAG", BRANCH, None),
    ("preview-$CI_COMMIT_SHORT_SHA", BRANCH, "preview-01234567"),
    ("sha-$CI_COMMIT_SHA", MR, "sha-" + "a" * 40),
    ("cache-$CI_PIPELINE_ID", BRANCH, "cache-31"),
    ("p${CI_PIPELINE_IID}-$CI_COMMIT_REF_SLUG", BRANCH, "p3-feature-x-y"),
    ("plain", BRANCH, "plain"),
])
def test_expand(pattern, pipeline, tag):
    assert expand(pattern, pipeline) == tag


# A fork's MR pipeline run in the target project runs on refs/merge-requests/<iid>/head; GitLab's
# $CI_COMMIT_REF_NAME and $CI_COMMIT_REF_SLUG still name the MR's source branch (Ci::Pipeline#source_ref).
FORK_MR = PipelineVars(ref="refs/merge-requests/5/head", sha="c" * 40, pipeline_id=60, mr_iid=5,
                       source_branch="Feature/Fork_Work")
FORK_MR_UNKNOWN_BRANCH = PipelineVars(ref="refs/merge-requests/5/head", sha="c" * 40, pipeline_id=60, mr_iid=5)


@pytest.mark.parametrize(("pattern", "pipeline", "tag"), [
    ("$CI_COMMIT_REF_SLUG", FORK_MR, "feature-fork-work"),
    ("$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA", FORK_MR, "feature-fork-work-cccccccc"),
    ("$CI_COMMIT_REF_NAME", FORK_MR, None),  # '/' is not valid in a tag
    ("$CI_COMMIT_BRANCH", FORK_MR, None),
    ("mr-$CI_MERGE_REQUEST_IID", FORK_MR, "mr-5"),
    # GitLab's value is not known: the pattern expands to nothing, never to the MR ref's slug
    ("$CI_COMMIT_REF_SLUG", FORK_MR_UNKNOWN_BRANCH, None),
    ("b-$CI_COMMIT_BRANCH", PipelineVars(ref="refs/merge-requests/5/head", sha="c" * 40, pipeline_id=60), None),
    ("mr-$CI_MERGE_REQUEST_IID", FORK_MR_UNKNOWN_BRANCH, "mr-5"),
    # a same-project MR pipeline's ref is its source branch already
    ("$CI_COMMIT_REF_SLUG", PipelineVars(ref="feature/x", sha="a" * 40, pipeline_id=1, mr_iid=42,
                                         source_branch="feature/x"), "feature-x"),
    # a branch pipeline has no source branch to take
    ("$CI_COMMIT_REF_SLUG", PipelineVars(ref="main", sha="a" * 40, pipeline_id=1, source_branch="other"), "main"),
])
def test_merge_request_pipelines_take_gitlabs_source_ref(pattern, pipeline, tag):
    assert expand(pattern, pipeline) == tag


def test_unknown_variable_is_rejected_with_the_known_ones_listed():
    with pytest.raises(ValueError, match=r"\$CI_JOB_ID.*CI_COMMIT_REF_SLUG"):
        validate_pattern("x-$CI_JOB_ID")


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1y", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("tag", "protected"), [
    ("latest", True), ("main", True), ("master", True), ("stable", True), ("v1", True), ("1.2.3", True),
    ("v1.2", True), ("mr-42", False), ("latest-mr", False), ("v1.2-rc1", False), ("develop", True),
    ("feature-x", False),
])
def test_protected_defaults_and_default_branch_slug(tag, protected):
    assert is_protected(tag, DEFAULT_PROTECTED, default_branch="Develop") is protected
