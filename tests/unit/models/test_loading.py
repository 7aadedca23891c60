"""Gradient checkpointing really recomputes, only in train mode, and dropout is off at load.

A forward pre-hook on a decoder layer counts its calls: one per forward pass without
checkpointing, two with it (the forward, then the recompute inside backward). A pre-hook, because
torch stops a recompute as soon as it has rebuilt every saved tensor, before the layer returns,
so a post-forward hook never sees the recompute.
"""

import pytest
import torch

from rlhf_dist.config.schema import LoraConfig
from rlhf_dist.models.loading import disable_dropout, enable_gradient_checkpointing, load_causal_lm
from rlhf_dist.models.lora import with_lora
from rlhf_dist.models.sequences import response_logprobs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small random Llama whose config asks for heavy dropout, saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, max_position_embeddings=64, attention_dropout=0.5,
    )
    path = tmp_path_factory.mktemp("ckpt") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _batch():
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, 96, (3, 5), generator=g)
    prompt_mask = torch.ones(3, 5, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    response_ids = torch.randint(0, 96, (3, 6), generator=g)
    response_mask = torch.ones(3, 6)
    response_mask[1, 4:] = 0  # right padding
    return prompt_ids, prompt_mask, response_ids, response_mask


def _layer_calls(model, train: bool):
    """Forward + backward of the response log-probs; returns the calls of decoder layer 0 and the grads."""
    calls = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    handle = base.model.layers[0].register_forward_pre_hook(lambda m, args: calls.append(m.training))
    model.train(train)
    try:
        logp, _ = response_logprobs(model, *_batch())
        logp.sum().backward()
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return calls, grads


def test_dropout_is_zero_at_load_so_train_mode_changes_nothing(model_dir):
    model = load_causal_lm(model_dir)
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    torch.manual_seed(2)
    with torch.no_grad():
        eval_logp = response_logprobs(model.eval(), *_batch())[0]
        train_logp = response_logprobs(model.train(), *_batch())[0]
    assert torch.equal(eval_logp, train_logp)  # the first PPO ratio is exactly 1


def test_the_unpatched_model_would_drop_out(model_dir):
    """The check above means something: with the saved config's dropout, train mode differs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        eval_logp = response_logprobs(model.eval(), *_batch())[0]
        train_logp = response_logprobs(model.train(), *_batch())[0]
    assert not torch.equal(eval_logp, train_logp)
    disable_dropout(model)
    with torch.no_grad():
        assert torch.equal(eval_logp, response_logprobs(model.train(), *_batch())[0])


def test_checkpointing_recomputes_each_layer_in_backward(model_dir):
    plain = load_causal_lm(model_dir)
    calls, plain_grads = _layer_calls(plain, train=True)
    assert calls == [True]  # no checkpointing: one forward, nothing recomputed

    checkpointed = load_causal_lm(model_dir)
    enable_gradient_checkpointing(checkpointed)
    calls, grads = _layer_calls(checkpointed, train=True)
    assert calls == [True, True]  # the forward, then its recompute during backward
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_does_nothing_in_eval_mode(model_dir):
    """Why the learners must switch to train mode: transformers checkpoints only while training."""
    model = load_causal_lm(model_dir)
    enable_gradient_checkpointing(model)
    calls, _ = _layer_calls(model, train=False)
    assert calls == [False]


def test_checkpointing_under_lora_recomputes_and_trains_the_adapters(model_dir):
    model = load_causal_lm(model_dir)
    enable_gradient_checkpointing(model)
    model = with_lora(model, LoraConfig(enabled=True, r=4), "CAUSAL_LM")
    # LoRA B starts at zero, so A gets no gradient at first; give B a value to see both flow.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    calls, grads = _layer_calls(model, train=True)
    assert calls == [True, True]
    lora_grads = {n: g for n, g in grads.items() if "lora_" in n}
    assert lora_grads and all(g.abs().sum() > 0 for g in lora_grads.values())
    assert not any("embed_tokens" in n for n in grads)  # frozen base weights get no gradient
