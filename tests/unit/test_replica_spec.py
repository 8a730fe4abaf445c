"""`replica_container`: a deployment spec and berthd's choices in, the ContainerSpec out."""

from __future__ import annotations

from config.parse import parse_spec, spec_id, template_id
from config.spec import RLIM_INFINITY, IpcMode, Ulimit
from daemon.reconcile.replica_spec import ReplicaIdentity, ReplicaPlacement, replica_container
from daemon.runtime.interface import ContainerSpec
from tests.unit.test_config_parse import make

MIB = 1024**2


def container_of(text: str) -> ContainerSpec:
    spec = parse_spec(text)
    who = ReplicaIdentity("test", spec.name, "r1", spec_id(spec), template_id(spec))
    return replica_container(spec, who, ReplicaPlacement(host_port=34567))


def test_shared_memory_ipc_and_ulimits_reach_the_container() -> None:
    container = container_of(
        make(
            '[resources]\nshm_size = "16Gi"\nipc = "shareable"\n'
            '[resources.ulimits]\nmemlock = "unlimited"\nnofile = { soft = 1024, hard = 4096 }\n'
        )
    )
    assert container.shm_size == 16 * 1024 * MIB
    assert container.ipc is IpcMode.SHAREABLE
    assert container.ulimits == {
        "memlock": Ulimit(RLIM_INFINITY, RLIM_INFINITY),
        "nofile": Ulimit(1024, 4096),
    }


def test_unset_they_leave_podman_its_defaults_but_ipc_is_private() -> None:
    container = container_of(make())
    assert container.shm_size is None
    assert container.ipc is IpcMode.PRIVATE
    assert container.ulimits == {}
