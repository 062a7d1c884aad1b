"""Race repair: a tag pushed again while the janitor was untagging it is put back.

The registry's push notification (``daemon.ingest``) finds an untag whose guard-to-write window holds
the push and stores a repair; this puts the tag back at the pushed digest through the operator's restore
rules (never over a newer push, but over a placeholder an interrupted untag left behind).
Must not: untag, or restore over anything the registry holds that is newer than the push.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from daemon.config import Settings
from daemon.execute.executor import RegistryFactory
from daemon.registry.errors import RestoreConflictError, RestoreError
from daemon.store import Store

log = logging.getLogger(__name__)


class RaceRepair:
    def __init__(self, settings: Settings, store: Store, registries: RegistryFactory,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.registries = registries
        self.clock = clock

    def run(self) -> int:
        """Put back tags that were pushed between an untag's guard read and its write (notified by the
        registry): the tag is re-pointed at the pushed digest unless something newer holds it."""
        repaired = 0
        for repair_id, _untag_id, project_path, repo, tag, digest in self.store.pending_repairs():
            project = self.settings.project_for(project_path)
            registry = self.registries(project_path, project) if project else None
            if registry is None:
                self.store.finish_repair(repair_id, "failed", "no registry access for the project", self.clock())
                continue
            try:
                current = registry.head(repo, tag)
                manifest = None if current == digest else registry.get_manifest(repo, digest)
                if current == digest:
                    state, note = "not_needed", "the pushed image still holds the tag"
                elif manifest is None:
                    state, note = "failed", f"{digest} is no longer in the registry"
                else:
                    # The operator's restore, with its rules: never over a newer push, but over a
                    # placeholder an interrupted untag left behind.
                    registry.restore(repo, tag, manifest)
                    state, note = "repaired", f"{repo}:{tag} points at {digest} again"
                    repaired += 1
            except RestoreConflictError as exc:
                state, note = "superseded", str(exc)
            except RestoreError as exc:
                state, note = "failed", str(exc)
            except Exception as exc:
                log.warning("repair of %s:%s failed: %s", repo, tag, exc)
                continue  # transient: tried again next tick
            if self.store.finish_repair(repair_id, state, note, self.clock()):
                log.warning("race repair %s: %s (%s)", repair_id, state, note)
            else:  # several workers: another one finished it while this one worked on it
                log.info("race repair %s was finished by another worker; its outcome stands", repair_id)
        return repaired
