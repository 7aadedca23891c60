"""Weight sync from the learner to the generators: the controller, buckets and checksums, a file per
transport (group.py: gloo/NCCL, ipc.py: CUDA IPC), the choice of transport, the vLLM worker extension
and LoRA adapters."""
