"""The planner's fp32 master, optimizer-state and gradient figures against what DeepSpeed allocates.

Real DeepSpeed engines on CPU (gloo), built by `rlhf_dist.learner.engine.build_engine` as the learner
builds them, on a tiny Llama: one rank in this process, or two spawned ranks. After one backward
the gradient partitions are summed (numel x element size) from the ZeRO optimizer's own tensors; after
the step the fp32 master partitions and Adam's exp_avg/exp_avg_sq. Each must be within 5% of
`rlhf_dist.planning.memory_formulas.model_states` for the same P, P_t, dtype, stage and world size. The figures are
printed: ``pytest tests/integration/test_memory_deepspeed.py -s``.
"""

import json
import os

import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.planning.memory_formulas import DTYPE_BYTES, model_states, shape_from_config

MODEL = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, tie_word_embeddings=False)
MICRO = 2


def _config(stage: int, world: int, lora: bool):
    return load_config(None, [
        "learner.num_workers=%d" % world, f"learner.zero_stage={stage}", f"learner.micro_batch_size={MICRO}",
        f"learner.mini_batch_size={MICRO * world}", f"learner.lora.enabled={str(lora).lower()}",
    ])


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _flat(items):
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flat(item)
        elif item is not None:
            yield item


def measure(rank: int, world: int, port: int, stage: int, dtype: str, lora: bool) -> dict[str, int]:
    """One rank: build the engine, one micro-step, and the bytes of each kind of ZeRO state."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_dist.learner.engine import build_engine, init_learner_world
    from rlhf_dist.models.loading import DTYPES
    from rlhf_dist.models.lora import with_lora

    torch.set_num_threads(1)
    init_learner_world(rank, world, "127.0.0.1", port)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL)).to(DTYPES[dtype])
    cfg = _config(stage, world, lora)
    if lora:
        model = with_lora(model, cfg.learner.lora, "CAUSAL_LM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    engine = build_engine(model, cfg.learner, dtype, 1e-3, world)
    engine.train()
    ids = torch.randint(0, MODEL["vocab_size"], (MICRO, 16), generator=torch.Generator().manual_seed(rank))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    opt = engine.optimizer
    if stage == 3:
        grads = _nbytes([opt.grad_partitions_flat_buffer])
    else:  # the reduced partition this rank owns, in the weights' dtype
        grads = _nbytes(_flat(opt.averaged_gradients.values() if isinstance(opt.averaged_gradients, dict)
                              else opt.averaged_gradients))
    engine.step()
    master = _nbytes(opt.fp32_partitioned_groups_flat if stage == 3 else opt.single_partition_of_fp32_groups)
    states = _nbytes(t for s in opt.optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
    return {"master": master, "optimizer": states, "gradients": grads, "trainable": trainable}


def _spawned(rank: int, world: int, port: int, stage: int, dtype: str, lora: bool, out: str) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    result = measure(rank, world, port, stage, dtype, lora)
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(result, f)
    # Leave together, and skip the interpreter's teardown: a rank exiting while gloo's (or ZeRO-3's)
    # threads still run in the other aborted with "terminate called without an active exception".
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _run(stage: int, dtype: str, world: int, lora: bool, tmp_path) -> dict[str, int]:
    from rlhf_dist.weight_sync.group import free_port

    if world == 1:
        return measure(0, 1, free_port(), stage, dtype, lora)
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(world, free_port(), stage, dtype, lora, str(tmp_path)), nprocs=world, join=True)
    return json.loads((tmp_path / "0.json").read_text())


CASES = [  # (stage, dtype, world, lora)
    (1, "float32", 1, False), (2, "float32", 1, False), (3, "float32", 1, False),
    (1, "bfloat16", 2, False), (2, "bfloat16", 2, False), (3, "bfloat16", 2, False), (2, "float32", 2, True),
]


@pytest.mark.parametrize(("stage", "dtype", "world", "lora"), CASES,
                         ids=[f"zero{s}-{d}-world{w}{'-lora' if lo else ''}" for s, d, w, lo in CASES])
def test_planner_matches_deepspeed_allocations(stage, dtype, world, lora, tmp_path):
    from transformers import LlamaConfig

    from rlhf_dist.planning.memory_formulas import lora_params

    actual = _run(stage, dtype, world, lora, tmp_path)
    shape = shape_from_config(LlamaConfig(**MODEL))
    cfg = _config(stage, world, lora)
    trainable = lora_params(shape, cfg.learner.lora) if lora else shape.params
    assert trainable == actual["trainable"]
    planned = model_states(shape.params, trainable, DTYPE_BYTES[dtype], stage, world)
    rows = []
    for item in ("master", "optimizer", "gradients"):
        want, got = getattr(planned, item), actual[item]
        rows.append(f"  {item:<10} planned {want:>12,.0f} B  DeepSpeed {got:>12,} B  error {100 * (want - got) / got:+.2f}%")
        assert want == pytest.approx(got, rel=0.05), rows[-1]
    print(f"\nZeRO-{stage} {dtype} world {world}{' LoRA' if lora else ''} (P={shape.params:,}, P_t={trainable:,}), "
          "per rank:\n" + "\n".join(rows))


@pytest.mark.parametrize(("stage", "offload"), [(2, "optimizer"), (3, "all")])
def test_offload_is_honoured_and_trains_on_cpu(stage, offload):
    """learner.offload reaches DeepSpeed's config, and a CPU run still trains (torch AdamW on the host)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_dist.learner.engine import build_engine, init_learner_world
    from rlhf_dist.weight_sync.group import free_port

    cfg = load_config(None, ["learner.num_workers=1", f"learner.zero_stage={stage}", f"learner.offload={offload}",
                             f"learner.micro_batch_size={MICRO}", f"learner.mini_batch_size={MICRO}"])
    init_learner_world(0, 1, "127.0.0.1", free_port())
    torch.manual_seed(0)
    engine = build_engine(LlamaForCausalLM(LlamaConfig(**MODEL)), cfg.learner, "float32", 1e-3, 1)
    assert engine.zero_cpu_offload() and bool(engine.zero_offload_param()) == (offload == "all")
    engine.train()
    ids = torch.randint(0, MODEL["vocab_size"], (MICRO, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(3):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
