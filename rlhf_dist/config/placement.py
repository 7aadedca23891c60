"""The ``placement`` section: CPUs and GPUs per worker of each role, and which roles share the
learners' bundles or processes (planned in rlhf_dist/planning/placement.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_dist.config.section import Section


class RoleResources(Section):
    """What each worker of one role asks Ray for (rlhf_dist/planning/placement.py)."""

    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per worker (fractions share a GPU)")
    num_cpus: float = Field(0.5, gt=0.0, description="CPUs per worker")


class GuestRoleResources(RoleResources):
    """Resources of a role that may share the learners' bundles (reference, reward)."""

    colocate_with: Literal["learner"] | None = Field(
        None,
        description="learner: worker i runs in learner rank i's bundle and shares its GPU (num_gpus is its "
        "share; GPU runs only), saving a GPU per role like OpenRLHF's colocate-all; null: bundles of its own",
    )


class ReferenceResources(GuestRoleResources):
    """Resources of the reference workers, which may also live inside the learner ranks."""

    colocate_with: Literal["learner", "learner_process"] | None = Field(
        None,
        description="learner: worker i runs in learner rank i's bundle and shares its GPU (num_gpus is its "
        "share; GPU runs only); learner_process: every learner rank holds the frozen reference beside the policy "
        "and computes its own shard's reference log-probs, with no reference actors (a process and a transfer "
        "less per step; its weights count in the learner's memory); null: bundles of its own",
    )


class PlacementConfig(Section):
    """Resources per worker of each role; worker counts live in each role's section."""

    rollout: RoleResources = Field(RoleResources(), description="per rollout generator")
    reward: GuestRoleResources = Field(GuestRoleResources(num_cpus=0.25), description="per reward scorer")
    reference: ReferenceResources = Field(ReferenceResources(num_cpus=0.25), description="per reference worker")
    learner: RoleResources = Field(RoleResources(), description="per learner rank")
    colocate: bool = Field(False, description="rollout and learner share GPUs; vLLM sleeps while training")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of each role's group of bundles"
    )

    @property
    def reference_in_learners(self) -> bool:
        """``reference.colocate_with=learner_process``: each learner rank holds the frozen reference and
        computes its shard's reference log-probs; there are no reference actors."""
        return self.reference.colocate_with == "learner_process"
