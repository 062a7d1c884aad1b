"""The janitor's own measurements that more than one process must agree on: the latency buckets of
``janitor_registry_request_seconds``, counted by the worker and rendered by the web."""

from __future__ import annotations

#: Upper bounds (seconds) of the ``janitor_registry_request_seconds`` histogram buckets; ``+Inf`` last.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INF = "+Inf"


def bucket_label(bound: float) -> str:
    """The ``le`` label of a bucket bound, as Prometheus clients write it (``0.005``, ``1.0``)."""
    return repr(float(bound))


#: Every ``le`` label in order, ``+Inf`` last.
LABELS: tuple[str, ...] = (*(bucket_label(b) for b in BUCKETS), INF)
