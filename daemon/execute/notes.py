"""The note on a merge request (``mr_note: true``): once its plan is done, one note lists what was untagged
and how to put it back.

Each tick, :class:`MrNotes` looks at the plans of merge requests (``merge_request_merged``,
``merge_request_closed``) that are ``done`` and that it has not looked at since they last changed. A plan
that untagged at least one tag, of a project with ``mr_note`` on, queues its merge request's note, unless
that merge request has one already: a merge request gets one note, ever. Its follow-up plans (tags of
pipelines that finished after the first plan ran, ``:after:`` keys) and a second plan after a reopen add
none; the note says that later tags go without another. Dry runs, held and cancelled plans are never
``done`` and post nothing; a plan done with nothing untagged (every tag skipped or failed) posts nothing
either, and is looked at again if it runs again (a retried untag).

Sending: the note is claimed in storage (``sending``, one more attempt) before GitLab is asked, and
finished after (``posted`` with GitLab's note id). A claim that did not finish (the worker died, or the
answer was lost) is taken up again when its lease runs out: GitLab's notes of the merge request are first
searched for the note's marker, so a note GitLab took is recorded, never posted twice. GitLab refusing
(401, 403, 404 or another 4xx but 429) is logged and recorded as ``refused``, and never asked again; GitLab
unreachable (5xx, 429, no answer) is asked again later, at most ``MAX_ATTEMPTS`` times in all, then
``failed``.

The note is posted with the project's ``registry_token``: the project's own access token, whose ``api``
scope and Maintainer role the untags need anyway, and which may comment on the project's merge requests
(GitLab: ``create_note`` needs a role that can read the merge request, Reporter). ``gitlab.api_token`` is
never used to write (it may be ``read_api``, which GitLab refuses for any POST: 403).

Must not: import GitLab's client (wiring hands one in, as :class:`NotePoster`), or untag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.model import Untag
from daemon.domain.policy import LEASE_SECONDS
from daemon.errors import GitLabError
from daemon.store import MrNote, MrPlan, Store

log = logging.getLogger(__name__)

#: Times a note is tried in all before it is given up (GitLab unreachable each time).
MAX_ATTEMPTS = 5
#: The wait before the next try after a transient failure: 1 minute, growing fourfold up to an hour.
RETRY_FIRST, RETRY_CAP = 60.0, 3600.0
#: At most this many untagged tags are listed, and this many kept or failed ones named.
LISTED_DONE, LISTED_OTHER = 50, 20
#: GitLab rate limiting: asked again later, as a 5xx or no answer; any other 4xx is a refusal.
TOO_MANY_REQUESTS = 429
_SKIPPED_WORDS = {"protected": "protected", "superseded": "pushed again since", "live_owner": "used by a live ref",
                  "missing": "already gone", "out_of_scope": "outside the project's repositories",
                  "cancelled": "cancelled", "rejected": "rejected by an admin"}


class NotePoster(Protocol):
    """GitLab's merge request notes (``daemon.gitlab.api.GitLabAPI``). Failures raise
    :class:`~daemon.errors.GitLabError`; one GitLab answered carries its HTTP ``status``."""

    def create_mr_note(self, project_path: str, token: str, iid: int, body: str) -> int: ...

    def find_mr_note(self, project_path: str, token: str, iid: int, marker: str) -> int | None: ...


def marker(plan_id: int) -> str:
    """The note's first line, hidden when GitLab renders it: how a note already posted is found again."""
    return f"<!-- registry-janitor mr_note plan={plan_id} -->"


def refusal(exc: GitLabError) -> bool:
    """GitLab answered, and would answer the same again (401, 403, 404, another 4xx but 429)."""
    status = getattr(exc, "status", None)
    return isinstance(status, int) and 400 <= status < 500 and status != TOO_MANY_REQUESTS


def retry_delay(attempts: int) -> float:
    return min(RETRY_FIRST * 4 ** max(attempts - 1, 0), RETRY_CAP)


def _names(untags: Sequence[Untag], image: Callable[[Untag], str], limit: int) -> str:
    shown = ", ".join(f"`{image(u)}` ({_SKIPPED_WORDS.get(u.reason or '', u.reason or u.outcome)})"
                      for u in untags[:limit])
    return shown + (f" and {len(untags) - limit} more" if len(untags) > limit else "")


def note_body(plan_id: int, project_path: str, trigger_kind: str, untags: Sequence[Untag], host: str) -> str:
    """The note's Markdown: each untagged image with its restore command, then the tags kept and the ones
    that failed, briefly."""
    def image(u: Untag) -> str:
        return f"{host}/{u.repository}:{u.tag}" if host else f"{u.repository}:{u.tag}"

    done = [u for u in untags if u.outcome == "done"]
    kept = [u for u in untags if u.outcome == "skipped"]
    failed = [u for u in untags if u.outcome == "failed"]
    ended = "was merged" if trigger_kind == "merge_request_merged" else "was closed"
    count = f"{len(done)} image tag{'s' if len(done) != 1 else ''}"
    lines = [marker(plan_id),
             f"This merge request {ended}: **registry-janitor** untagged the {count} pushed for it (plan {plan_id}):",
             ""]
    lines += [f"- `{image(u)}`: put back with `registry-janitor restore {u.id}`" for u in done[:LISTED_DONE]]
    if len(done) > LISTED_DONE:
        lines.append(f"- and {len(done) - LISTED_DONE} more: `registry-janitor audit --project {project_path}`")
    if kept:
        lines += ["", f"Kept {len(kept)}: {_names(kept, image, LISTED_OTHER)}."]
    if failed:
        lines += ["", f"Failed {len(failed)}, still tagged (an operator may retry them):"
                      f" {_names(failed, image, LISTED_OTHER)}."]
    lines += ["", "Only the tags were removed: an operator puts one back at the image it pointed to with"
              " `registry-janitor restore <untag id>` while the registry still holds that image. Tags of this"
              " merge request found later are untagged without another note"
              f" (`registry-janitor audit --project {project_path}`)."]
    return "\n".join(lines)


class MrNotes:
    """The execute stage's last step each tick: queue the notes of merge requests whose plans are done, and
    send the ones due through ``poster``."""

    def __init__(self, settings: Settings, store: Store, poster: NotePoster,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.poster = poster
        self.clock = clock

    def run(self, limit: int = 20) -> int:
        """Queue what plans done since the last tick call for, then send up to ``limit`` notes; returns
        how many were posted."""
        self.queue_done_plans()
        return self.send_due(limit)

    def queue_done_plans(self, batch: int = 200) -> int:
        queued = 0
        while True:
            plans = self.store.mr_note_plans(batch)
            for plan in plans:
                queued += self.store.check_mr_plan(plan, queue=self._wants_note(plan), now=self.clock())
            if len(plans) < batch:
                return queued

    def _wants_note(self, plan: MrPlan) -> bool:
        project = self.settings.project_for(plan.project_path)
        return project is not None and project.mr_note and not project.dry_run and plan.done > 0

    def send_due(self, limit: int = 20) -> int:
        """Send up to ``limit`` notes due, one claim at a time; the first that GitLab cannot take now ends
        the round (the others would wait on the same GitLab)."""
        posted = 0
        for _ in range(limit):
            claimed = self.store.claim_mr_notes(self.clock(), LEASE_SECONDS, 1)
            if not claimed:
                break
            note = claimed[0]
            try:
                state = self._send(note)
            except Exception as exc:  # one note must not stop the tick; it is tried again, bounded
                log.exception("note on %s!%s failed", note.project_path, note.mr_iid)
                self._transient(note, f"{type(exc).__name__}: {exc}")
                break
            if state == "posted":
                posted += 1
            elif state in ("pending", "failed"):
                break
        return posted

    def _send(self, note: MrNote) -> str:
        """Post ``note`` (or find it posted by an earlier attempt) and record the outcome; returns the
        state it was left in."""
        where = f"{note.project_path}!{note.mr_iid}"
        if note.attempts > MAX_ATTEMPTS:
            return self._finish(note, "failed", f"gave up after {MAX_ATTEMPTS} attempts")
        project = self.settings.project_for(note.project_path)
        if project is None or not project.mr_note:
            return self._finish(note, "skipped", "mr_note is off for the project" if project else
                                "the project is no longer configured")
        token = self._token(project)
        if token is None:
            detail = "the project has no registry_token to post the note with (api scope)"
            log.warning("note on %s not posted: %s", where, detail)
            return self._finish(note, "refused", detail)
        try:
            found = self.poster.find_mr_note(note.project_path, token, note.mr_iid, marker(note.plan_id)) \
                if note.attempts > 1 else None
            gitlab_id = found if found is not None else self.poster.create_mr_note(
                note.project_path, token, note.mr_iid, self._body(note))
        except GitLabError as exc:
            if refusal(exc):
                log.warning("note on %s refused, not asked again: %s", where, exc)
                return self._finish(note, "refused", str(exc))
            return self._transient(note, str(exc))
        log.info("note %s on %s posted%s", gitlab_id, where, " (found from an earlier attempt)" if found else "")
        return self._finish(note, "posted", None, gitlab_id)

    @staticmethod
    def _token(project: ProjectSettings) -> str | None:
        return project.registry_token.get_secret_value() if project.registry_token is not None else None

    def _body(self, note: MrNote) -> str:
        untags = self.store.plan_untags(note.plan_id)
        plan = self.store.get_plan(note.plan_id)
        kind = plan.trigger_kind if plan is not None else "merge_request_merged"
        hosts = self.settings.registry.hostnames
        return note_body(note.plan_id, note.project_path, kind, untags, hosts[0] if hosts else "")

    def _transient(self, note: MrNote, detail: str) -> str:
        """GitLab could not take the note now: again later, unless it was the last attempt."""
        if note.attempts >= MAX_ATTEMPTS:
            log.warning("note on %s!%s given up after %d attempts: %s", note.project_path, note.mr_iid,
                        note.attempts, detail)
            return self._finish(note, "failed", detail)
        now = self.clock()
        delay = retry_delay(note.attempts)
        log.warning("note on %s!%s not posted (attempt %d of %d), next in %ds: %s", note.project_path,
                    note.mr_iid, note.attempts, MAX_ATTEMPTS, int(delay), detail)
        self.store.retry_mr_note(note.id, now + delay, now, detail)
        return "pending"

    def _finish(self, note: MrNote, state: str, detail: str | None, gitlab_id: int | None = None) -> str:
        self.store.finish_mr_note(note.id, state, self.clock(), gitlab_note_id=gitlab_id, detail=detail)
        return state
