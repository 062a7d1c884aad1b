"""``storage.retention``: its defaults, durations as written, and the shortest each key allows, with the key
path and what to write in the error."""

from __future__ import annotations

import pytest

from daemon.config import settings_from_dict
from daemon.errors import ConfigError


def test_defaults_and_durations_as_written():
    retention = settings_from_dict({}).storage.retention
    assert (retention.events, retention.events.text, retention.plans.text) == (7 * 86400, "7d", "180d")
    given = settings_from_dict({"storage": {"retention": {"events": "36h", "plans": 90 * 86400}}}).storage.retention
    assert (given.events, given.plans) == (36 * 3600, 90 * 86400)


@pytest.mark.parametrize(("retention", "error"), [
    ({"events": "1h"}, "storage.retention.events: 1h is too short: give at least 1d"),
    ({"plans": "12h"}, "storage.retention.plans: 12h is too short: give at least 1d"),
    ({"events": "soon"}, "storage.retention.events: 'soon' is not a duration"),
    ({"event": "7d"}, "storage.retention.event: unknown key"),
])
def test_too_short_or_unknown_is_refused_with_its_key(retention, error):
    with pytest.raises(ConfigError) as refused:
        settings_from_dict({"storage": {"retention": retention}})
    assert error in str(refused.value)
