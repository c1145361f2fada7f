"""An OCI sandbox's workload: which of the VM's disks are the image's layers, the image's run
config, and setting its root up in the guest through the agent (:func:`start_workload`).

The layers are the first ``layers`` entries of ``VmSpec.disks`` (read-only erofs files from
the OCI cache), so they are vdb, vdc, ... after the sandbox's own system image on vda. The
VmHandle calls :func:`start_workload` on its first agent connection, before shares are mounted
(they are mounted inside the image's root) and before anyone gets the sandbox. A template does
the same before it is saved (block devices migrate; a template's clones restore with the root
mounted), and each clone sends the config again, which is how two images with the same layers
but another config can share a template.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from engine.agent.client import Agent
from engine.errors import ConfigError, EngineError

MAX_LAYERS = 16  # virtio-mmio has 24 slots: the system image, agent, network, scratch and shares need the rest


class WorkloadError(EngineError):
    """An OCI sandbox's image root could not be set up in the guest (the VM is failed with it)."""


@dataclass(frozen=True)
class OciWorkload:
    """The image a sandbox runs its commands in."""

    image: str  # the name it was asked for (python:3.11)
    image_id: str  # sha256:... (the config's digest)
    layers: int  # how many of VmSpec.disks, from the first, are its layers (bottom first)
    env: tuple[tuple[str, str], ...]
    working_dir: str
    user: str
    command: tuple[str, ...]  # Entrypoint + Cmd, or + the args given to .oci()

    def check(self, disks: Sequence[object]) -> None:
        if not 1 <= self.layers <= MAX_LAYERS:
            raise ConfigError(f"the image {self.image} has {self.layers} layers; a sandbox takes 1 to {MAX_LAYERS} "
                              "(flatten the image, e.g. with a multi-stage build)")
        if len(disks) < self.layers:
            raise ConfigError(f"the image {self.image} needs its {self.layers} layer disks first among the disks")

    def devices(self) -> list[str]:
        """The layers' guest devices, bottom first (vda is the system image)."""
        return [f"/dev/vd{chr(ord('b') + index)}" for index in range(self.layers)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OciWorkload:
        data = json.loads(text)
        return cls(image=str(data["image"]), image_id=str(data["image_id"]), layers=int(data["layers"]),
                   env=tuple((str(k), str(v)) for k, v in data["env"]), working_dir=str(data["working_dir"]),
                   user=str(data["user"]), command=tuple(str(a) for a in data["command"]))


async def start_workload(agent: Agent, workload: OciWorkload) -> str:
    """Mount the image's root in the guest (once) and give the agent its config; the root's
    path in the guest. WorkloadError naming the image if the guest cannot."""
    try:
        return await agent.set_workload(workload.devices(), env=dict(workload.env), cwd=workload.working_dir,
                                        user=workload.user)
    except EngineError as err:
        raise WorkloadError(f"setting up the image {workload.image} in the sandbox failed: {err}") from err
