"""The per-namespace cap (KUBETUNE_MAX_RUNNING_PER_NAMESPACE) releases the jobs it holds in creation order, and a new
job never takes the place an older held one waits for."""

from __future__ import annotations

import pytest

from kubetune.controller import builders
from kubetune.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def test_held_jobs_start_in_creation_order(user, sim, operator):
    ns = user.ns

    def unsuspended() -> set[str]:
        return {
            j["metadata"]["name"]
            for j in sim.kube.list("Job", ns)
            if not j["spec"]["suspend"]
            and not any(c.get("type") == "Complete" for c in (j.get("status") or {}).get("conditions") or [])
        }

    operator.reconfigure(max_running_per_namespace=1)
    try:
        # Names in reverse alphabetical order, each created once the one before has its Job: the order the cap
        # keeps is the creation order, not the names'.
        for name in ("e", "d", "c"):
            user.apply(name)
            wait_for(lambda name=name: sim.kube.get("Job", ns, name), what=f"{name}'s Job")
        assert unsuspended() == {"e"}
        held = {j["metadata"]["name"]: j for j in sim.kube.list("Job", ns) if j["spec"]["suspend"]}
        assert set(held) == {"d", "c"}
        assert all(j["metadata"]["annotations"][builders.ANNOTATION_HELD] == "true" for j in held.values())
        assert (
            held["d"]["metadata"]["annotations"][builders.ANNOTATION_QUEUE_ORDER]
            < held["c"]["metadata"]["annotations"][builders.ANNOTATION_QUEUE_ORDER]
        )
        user.wait_phase("c", "Queued")

        sim.start(ns, "e")
        sim.succeed(ns, "e")
        wait_for(lambda: unsuspended() == {"d"}, what="d released, the oldest held job")
        user.apply("a")  # newer than c: waits behind it
        wait_for(lambda: (j := sim.kube.get("Job", ns, "a")) and j["spec"]["suspend"], what="a held")
        sim.start(ns, "d")
        sim.succeed(ns, "d")
        wait_for(lambda: unsuspended() == {"c"}, what="c released before a")
        assert builders.ANNOTATION_QUEUE_ORDER not in (sim.job(ns, "c")["metadata"].get("annotations") or {})
        sim.start(ns, "c")
        user.wait_phase("c", "Running")
        assert user.status("a")["phase"] == "Queued"
        sim.succeed(ns, "c")
        wait_for(lambda: unsuspended() == {"a"}, what="a released last")
    finally:
        operator.reconfigure(max_running_per_namespace=0)
