"""Pods that will never start: the decision, and the report left in the log directory.

Kubernetes keeps a pod Pending for as long as no node fits it or its image cannot be pulled,
and the upstream executor waits for it forever. Everything here is pure.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from kubernetes.client import ApiClient, CoreV1Event, V1Pod

# Container waiting reasons that do not clear up by themselves. CreateContainerConfigError is
# a missing Secret or ConfigMap key (e.g. the run's Secret deleted under it).
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
    }
)


def stuck_reason(pod: V1Pod, now: datetime, timeout: float) -> str | None:
    """Why the pod counts as stuck, or None.

    Stuck: Pending for longer than timeout seconds since its creationTimestamp, and either
    unschedulable (condition PodScheduled False, reason Unschedulable) or with a container
    waiting for an image that cannot be pulled. A young pod, or one waiting for anything else
    (volumes, a node still starting), is left alone. now must be timezone-aware.
    """
    status = pod.status
    created = pod.metadata.creation_timestamp if pod.metadata else None
    if status is None or status.phase != "Pending" or created is None:
        return None
    if created.tzinfo is None:  # the API server's times are UTC
        created = created.replace(tzinfo=UTC)
    pending_seconds = (now - created).total_seconds()
    if pending_seconds <= timeout:
        return None
    pending = f"Pending for {pending_seconds:.0f} s (limit {timeout:g} s)"

    for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in STUCK_WAITING_REASONS:
            return (
                f"{pending}: {waiting.reason}: container {container.name} "
                f"(image {container.image}): {waiting.message or 'no message'}"
            )
    for condition in status.conditions or []:
        if (
            condition.type == "PodScheduled"
            and condition.status == "False"
            and condition.reason == "Unschedulable"
        ):
            return f"{pending}: Unschedulable: {condition.message or 'no message'}"
    return None


def describe_stuck_pod(
    pod: V1Pod, reason: str, events: Sequence[CoreV1Event], events_error: str | None = None
) -> str:
    """A plain-text account of a stuck pod, like `kubectl describe pod`: why it was given up,
    its events (or why they could not be read), then the whole pod as JSON."""
    lines = [f"Pod {pod.metadata.name}: {reason}", "", "Events:"]
    if events_error is not None:
        lines.append(f"  (not readable: {events_error})")
    elif not events:
        lines.append("  (none)")
    for event in sorted(events, key=_event_time):
        when = _event_time(event)
        count = f" (x{event.count})" if event.count and event.count > 1 else ""
        lines.append(
            f"  {'-' if when == _UNKNOWN_TIME else when.isoformat()}  {event.type}  "
            f"{event.reason}{count}: {event.message}"
        )
    lines += ["", "Pod:", json.dumps(ApiClient().sanitize_for_serialization(pod), indent=2)]
    return "\n".join(lines) + "\n"


# Events without any time sort first.
_UNKNOWN_TIME = datetime.min.replace(tzinfo=UTC)


def _event_time(event: CoreV1Event) -> datetime:
    """When the event last happened, as far as the event says."""
    when = (
        event.last_timestamp
        or event.event_time
        or event.first_timestamp
        or (event.metadata.creation_timestamp if event.metadata else None)
    )
    if when is None:
        return _UNKNOWN_TIME
    return when if when.tzinfo else when.replace(tzinfo=UTC)
