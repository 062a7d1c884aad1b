"""Cancelling scheduled plans settles their waiting untags, and only theirs."""

from support.janitor import make_store

from daemon.domain.model import Decision, PlannedUntag, Trigger

NOW = 1_700_000_000.0


def _plan(store, ref, tags):
    trigger = Trigger("branch_deleted", "g/app", f"branch_deleted:g/app:{ref}", NOW, ref=ref)
    decisions = [Decision(PlannedUntag(0, 1, "g/app", tag, "sha256:1"), "pending") for tag in tags]
    plan_id, _ = store.create_plan(trigger, decisions, state="scheduled", due_at=NOW + 900, now=NOW)
    return plan_id


def test_cancel_settles_the_cancelled_plans_untags_and_leaves_the_others_waiting(tmp_path):
    store = make_store(tmp_path)
    gone = _plan(store, "feature", ["feature", "mr-1"])
    kept = _plan(store, "other", ["other"])

    assert store.cancel_scheduled("g/app", kinds=["branch_deleted"], ref="feature", now=NOW + 60,
                                  note="branch feature was pushed again") == 1

    assert store.get_plan(gone).state == "cancelled" and store.get_plan(kept).state == "scheduled"
    assert [(u.tag, u.outcome, u.reason) for u in store.plan_untags(gone)] == [
        ("feature", "skipped", "cancelled"), ("mr-1", "skipped", "cancelled")]
    assert [(u.tag, u.outcome) for u in store.plan_untags(kept)] == [("other", "pending")]
    assert store.plan_state("branch_deleted:g/app:feature") is None  # the same trigger may plan anew
    assert store.cancel_scheduled("g/app", kinds=["branch_deleted"], ref="feature", now=NOW + 120,
                                  note="again") == 0
    store.close()
