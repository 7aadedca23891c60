"""`ReferenceSpec`: what the reference actor receives instead of the whole `RunConfig`, and a
`ReferenceModel` that follows it (its temperature, its micro-batch size)."""

import pickle

import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.experience import Experience
from rlhf_dist.models.reference import MIN_MICRO_BATCH, ReferenceModel, ReferenceSpec
from rlhf_dist.models.sequences import response_logprobs


def test_every_field_comes_from_its_config_key():
    cfg = load_config(None, [
        "model.dtype=bfloat16", "model.trust_remote_code=true", "rollout.sampling.temperature=0.7",
        "learner.micro_batch_size=16", "reference.path=/models/sft",
    ])
    assert ReferenceSpec.from_config(cfg, "/models/policy") == ReferenceSpec(
        model_path="/models/sft", dtype="bfloat16", trust_remote_code=True, temperature=0.7, micro_batch_size=16
    )


def test_the_policy_is_the_reference_without_a_path_of_its_own():
    cfg = load_config(None, [])
    assert cfg.reference.path is None
    assert ReferenceSpec.from_config(cfg, "/models/policy").model_path == "/models/policy"


@pytest.mark.parametrize("learner_mbs", [1, 2])
def test_micro_batch_has_a_floor(learner_mbs):
    """The reference runs no backward pass: a learner's micro-batch below the floor is raised to it."""
    assert MIN_MICRO_BATCH == 8
    cfg = load_config(None, [f"learner.micro_batch_size={learner_mbs}"])
    assert ReferenceSpec.from_config(cfg, "/models/policy").micro_batch_size == 8


def test_the_record_pickles():
    """Ray pickles the record to each ReferenceActor."""
    spec = ReferenceSpec.from_config(load_config(None, ["rollout.sampling.temperature=0.7"]), "/models/policy")
    assert pickle.loads(pickle.dumps(spec)) == spec


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small random Llama saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("ref") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_model_uses_the_specs_temperature_and_micro_batch(model_dir):
    """3 sequences in micro-batches of 2: two forward passes, and log-probs of logits / 0.5."""
    g = torch.Generator().manual_seed(1)
    response_mask = torch.ones(3, 4)
    response_mask[1, 3:] = 0
    exp = Experience(
        prompt_ids=torch.randint(0, 96, (3, 5), generator=g), prompt_mask=torch.ones(3, 5, dtype=torch.long),
        response_ids=torch.randint(0, 96, (3, 4), generator=g), response_mask=response_mask,
        rollout_logprobs=torch.zeros(3, 4),
    )
    spec = ReferenceSpec(model_path=str(model_dir), dtype="float32", trust_remote_code=False, temperature=0.5,
                         micro_batch_size=2)
    threads = torch.get_num_threads()
    try:
        ref = ReferenceModel(spec)  # sets one torch thread, as an actor process wants
    finally:
        torch.set_num_threads(threads)
    passes = []
    ref.model.register_forward_pre_hook(lambda module, args: passes.append(1))
    got = ref.logprobs(exp)
    assert len(passes) == 2
    args = (ref.model, exp.prompt_ids, exp.prompt_mask, exp.response_ids, exp.response_mask)
    with torch.no_grad():
        at_half, _ = response_logprobs(*args, temperature=0.5)
        at_one, _ = response_logprobs(*args, temperature=1.0)
    mask = response_mask.bool()
    torch.testing.assert_close(got[mask], at_half[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[mask], at_one[mask], atol=1e-3)
