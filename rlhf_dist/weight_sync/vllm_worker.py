"""The vLLM worker extension (``LLM(worker_extension_cls=...)``): opens the receiving end of the
weight sync inside vLLM's worker and loads what arrives into the engine's model in place.
"""

from __future__ import annotations

from rlhf_dist.weight_sync.adapters import write_adapter
from rlhf_dist.weight_sync.buckets import WeightLayout
from rlhf_dist.weight_sync.channels import open_receiver
from rlhf_dist.weight_sync.controller import WeightSyncError
from rlhf_dist.weight_sync.transports import GeneratorRoute


class VLLMWorkerExtension:
    """Mixed into vLLM's worker (``LLM(worker_extension_cls=...)``); called via ``collective_rpc``.

    The receiver is opened inside the worker process, so on GPUs an NCCL broadcast lands directly in
    the worker's device memory, and a CUDA IPC handle is opened there.
    """

    def init_weight_sync(self, route: GeneratorRoute, generation: int) -> bool:
        import torch.distributed as dist

        local_rank = dist.get_rank() if dist.is_initialized() and dist.get_world_size() > 1 else 0
        self._rlhf_sync = open_receiver(route, generation, local_rank)
        return True

    def receive_weights(self, layout: WeightLayout, adapter_dir: str | None = None) -> tuple[list[int], int]:
        """Receive a sync; returns the checksums and the bytes received. Full weights are loaded in
        place; an adapter is written to ``adapter_dir`` (by the first worker), for the engine to
        register as a LoRA (`rlhf_dist.rollout.vllm_engine.VLLMEngine`)."""
        import torch.distributed as dist

        if getattr(self, "_rlhf_sync", None) is None:
            raise WeightSyncError("receive_weights before init_weight_sync: the sync group is not open")
        device = next(self.model_runner.model.parameters()).device
        named, sums = self._rlhf_sync.receive_all(layout.buckets, device)
        if layout.adapter is None:
            self.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)
        elif adapter_dir is None:
            raise WeightSyncError("an adapter arrived without a directory to write it to")
        elif not dist.is_initialized() or dist.get_rank() == 0:
            write_adapter(adapter_dir, layout.adapter, named)
        return sums, sum(t.nbytes for _, t in named)
