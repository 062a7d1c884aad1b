"""Test infrastructure: a real registry, a GitLab stand-in, image helpers and in-process servers.

Imported as `support` (pytest puts `tests/` on sys.path for `tests/conftest.py`; keep `tests/`
without an `__init__.py`). The fixtures in `tests/conftest.py` build these; wiring a janitor under test:

    gitlab.url / gitlab.api_url            GitLab base URL / API URL for python-gitlab and /api/v4/job
    registry.url, registry.host            registry API base and the host:port of image references
    registry.notification_token            the Bearer token the registry sends with notifications
    gitlab.set_relay(f"{janitor}/webhooks/registry")   route this test's registry notifications there
    registry.mark(); ...; registry.request_log(repo=...)   what the registry served, e.g. no writes

Helpers: `support.images` (push_image, push_index, tags, digest_of, blob_exists, untag, ...),
`support.servers` (ServerThread, Recorder, wait_for), `support.janitor` (Harness, Janitors behind the
`janitor` fixture, make_settings, webhook payload builders), `support.ops` (the seeded story of the
operations-surface tests), `support.payloads` (load_payload: GitLab's documented payloads),
`support.hook_delivery` (how GitLab posts hook deliveries and disables hooks that fail, behind the
stand-in's `deliver`, `resend` and `test_hook`). Nothing here imports `tests/conftest.py`.
"""

from .gitlab_standin import GitLabStandin
from .registry import LoggedRequest, Registry
from .servers import Recorder, ServerThread, wait_for

__all__ = ["GitLabStandin", "LoggedRequest", "Recorder", "Registry", "ServerThread", "wait_for"]
