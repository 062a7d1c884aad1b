"""Tag patterns: GitLab's ``$CI_*`` variables expanded into the tags a pipeline is expected to push.

Pure: no I/O, no clock. Owns the ref slug rule (GitLab's ``CI_COMMIT_REF_SLUG``), pattern validation,
expansion, durations and the protected-tag rule (S2), so every rule about a tag's *name* is in one file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from daemon.domain.names import is_tag

VARIABLES = (
    "CI_COMMIT_REF_SLUG",
    "CI_COMMIT_REF_NAME",
    "CI_COMMIT_BRANCH",
    "CI_COMMIT_TAG",
    "CI_COMMIT_SHA",
    "CI_COMMIT_SHORT_SHA",
    "CI_PIPELINE_ID",
    "CI_PIPELINE_IID",
    "CI_MERGE_REQUEST_IID",
)
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
# Each unit at most once, largest first: 1h30m, 2d12h, 1m30s (or one part: 30s, 15m, 2h, 7d, 1w).
_DURATION = re.compile(r"\s*" + "".join(rf"(?:(\d+(?:\.\d+)?)\s*{unit}\s*)?" for unit in _UNIT))


class Duration(float):
    """Seconds that keep the text they were written as: ``Duration(5400, "1h30m").text == "1h30m"``, so a
    configured ``14d`` is printed as ``14d`` (:func:`format_duration`). Arithmetic gives plain floats."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, seconds: float, text: str | None = None) -> Duration:
        value = super().__new__(cls, seconds)
        value.text = text.strip() if text is not None else format_duration(seconds)
        return value

    def __getnewargs__(self) -> tuple[float, str]:  # type: ignore[override]
        return (float(self), self.text)


def parse_duration(text: str) -> Duration:
    """``30s``, ``15m``, ``2h``, ``7d``, ``1w`` or several of them largest first (``1h30m``, ``2d12h``) to
    seconds; never negative."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration; write it like 30s, 15m, 2h, 7d or 1h30m"
                         " (units w, d, h, m, s, each once, largest first)")
    return Duration(sum(float(n) * _UNIT[u] for n, u in zip(match.groups(), _UNIT, strict=True) if n), text)


def format_duration(seconds: float) -> str:
    """A duration as written (a :class:`Duration`'s own text), else in the largest whole units: 5400 is
    ``1h30m``, 1209600 ``14d``, 90.5 ``1m30.5s``, 0 ``0s``."""
    if isinstance(seconds, Duration):
        return seconds.text
    sign, rest = ("-", -float(seconds)) if seconds < 0 else ("", float(seconds))
    whole = int(rest)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    left = round(whole + rest - int(rest), 6)
    if left or not parts:
        parts.append(f"{left:g}s")
    return sign + "".join(parts)


def ref_slug(ref: str) -> str:
    """GitLab's ``CI_COMMIT_REF_SLUG``: lowercased, every char outside a-z0-9 becomes ``-``,
    cut to 63 bytes, no leading or trailing ``-``."""
    slug = re.sub(r"[^a-z0-9]", "-", ref.lower())[:63]
    return slug.strip("-")


def variables_in(pattern: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _VAR.finditer(pattern)]


def validate_pattern(pattern: str) -> None:
    """Raise ValueError naming any variable the janitor cannot know for a pipeline."""
    unknown = [v for v in variables_in(pattern) if v not in VARIABLES]
    if unknown:
        raise ValueError(
            f"unknown variable(s) {', '.join('$' + v for v in unknown)}; "
            f"use one of {', '.join('$' + v for v in VARIABLES)}"
        )
    if not pattern:
        raise ValueError("a pattern must not be empty")


@dataclass(frozen=True)
class PipelineVars:
    """What GitLab would put in a pipeline's ``$CI_*`` variables.

    ``source_branch`` is a merge-request pipeline's source branch: GitLab's ``$CI_COMMIT_REF_NAME`` and
    ``$CI_COMMIT_REF_SLUG`` name it (``Ci::Pipeline#source_ref``) whatever ref the pipeline runs on, a
    fork's MR pipeline run in the target project included (its ref is ``refs/merge-requests/<iid>/head``).
    For such a pipeline whose source branch is not known, both are unknown and expand to nothing."""

    ref: str
    sha: str
    pipeline_id: int
    pipeline_iid: int | None = None
    is_tag: bool = False
    mr_iid: int | None = None
    source_branch: str | None = None

    @property
    def ref_name(self) -> str:
        """``$CI_COMMIT_REF_NAME``: the source branch of a merge-request pipeline, else the ref."""
        if self.mr_iid is not None and self.source_branch:
            return self.source_branch
        return "" if self.ref.startswith("refs/merge-requests/") else self.ref

    def values(self) -> Mapping[str, str]:
        # Merge request pipelines have no CI_COMMIT_BRANCH; tag pipelines have CI_COMMIT_TAG instead.
        name = self.ref_name
        return {
            "CI_COMMIT_REF_SLUG": ref_slug(name),
            "CI_COMMIT_REF_NAME": name,
            "CI_COMMIT_BRANCH": "" if self.is_tag or self.mr_iid is not None or not name else self.ref,
            "CI_COMMIT_TAG": self.ref if self.is_tag else "",
            "CI_COMMIT_SHA": self.sha,
            "CI_COMMIT_SHORT_SHA": self.sha[:8],
            "CI_PIPELINE_ID": str(self.pipeline_id),
            "CI_PIPELINE_IID": "" if self.pipeline_iid is None else str(self.pipeline_iid),
            "CI_MERGE_REQUEST_IID": "" if self.mr_iid is None else str(self.mr_iid),
        }


def expand(pattern: str, pipeline: PipelineVars) -> str | None:
    """The tag ``pattern`` names for this pipeline, or None when a variable it uses is empty
    (no MR, not a tag pipeline) or the result is not a valid tag."""
    values = pipeline.values()
    empty = False

    def sub(match: re.Match[str]) -> str:
        nonlocal empty
        value = values.get(match.group(1) or match.group(2), "")
        empty = empty or not value
        return value

    tag = _VAR.sub(sub, pattern)
    if empty or not is_tag(tag):
        return None
    return tag


def is_protected(tag: str, protected: Iterable[str], default_branch: str | None) -> bool:
    """S2: a tag fully matching a protected expression, or the default branch's slug, is never untagged."""
    if default_branch and tag == ref_slug(default_branch):
        return True
    return any(re.fullmatch(expr, tag) for expr in protected)
