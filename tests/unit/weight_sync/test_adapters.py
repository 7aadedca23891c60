"""LoRA pieces without Ray or engines: which modules get adapters, the tensors adapter-only sync sends,
and the two forms the generators load them in (a peft adapter directory, a peft model)."""

from pathlib import Path

import pytest
import torch

from rlhf_dist.config.schema import LoraConfig
from rlhf_dist.models.lora import lora_targets, with_lora
from rlhf_dist.models.weights import adapter_entries, adapter_spec
from rlhf_dist.weight_sync.adapters import AdapterVersions, load_into_peft, vllm_max_lora_rank, write_adapter
from rlhf_dist.weight_sync.buckets import Bucket, TensorMeta, WeightLayout

BODY = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def _llama(tie: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


def _lora_model(seed: int = 0, **overrides):
    model = with_lora(_llama(), LoraConfig(enabled=True, r=4, **overrides), "CAUSAL_LM")
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # B starts at zero; give the adapter a visible effect
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model


IDS = torch.tensor([[1, 5, 9, 13, 17, 21]])


def test_all_linear_gains_the_output_head_which_peft_leaves_out():
    assert lora_targets(_llama(), LoraConfig(), "CAUSAL_LM") == sorted(BODY + ["lm_head"])
    assert lora_targets(_llama(), LoraConfig(target_modules=["q_proj"]), "CAUSAL_LM") == ["lm_head", "q_proj"]
    assert lora_targets(_llama(), LoraConfig(adapt_head=False), "CAUSAL_LM") == "all-linear"
    # A head tied to the input embeddings stays as it is; so does every non-causal-LM task.
    assert lora_targets(_llama(tie=True), LoraConfig(), "CAUSAL_LM") == "all-linear"
    assert lora_targets(_llama(), LoraConfig(), "SEQ_CLS") == "all-linear"


def test_a_target_module_that_matches_nothing_is_an_error_even_beside_ones_that_match():
    from rlhf_dist.errors import UserError

    with pytest.raises(UserError, match=r"learner.lora.target_modules: 'q_projj' match\(es\) no module of the model; its "
                                        r"linear layers are named down_proj, gate_proj, .*lm_head"):
        with_lora(_llama(), LoraConfig(enabled=True, r=4, target_modules=["q_proj", "q_projj"]), "CAUSAL_LM")
    assert with_lora(_llama(), LoraConfig(enabled=True, r=4, target_modules=["q_proj", "layers.0.mlp.up_proj"]), "CAUSAL_LM")


def test_adapter_entries_are_the_trained_factors_under_peft_saved_names():
    from peft import get_peft_model_state_dict

    model = _lora_model()
    entries = adapter_entries(model)
    saved = get_peft_model_state_dict(model, save_embedding_layers=False)
    assert sorted(e.name for e in entries) == sorted(saved)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(torch.Size(e.shape).numel() for e in entries) == trained
    # 1 layer: q,k,v,o 4 x (32 + 32) x r; gate, up (32 + 48) x r each; down (48 + 32) x r; head (32 + 64) x r.
    assert trained == 4 * (4 * 64 + 3 * 80 + 96)
    for entry in entries:
        torch.testing.assert_close(entry.compute(), saved[entry.name], rtol=0, atol=0)
    spec = adapter_spec(model)
    assert (spec.r, spec.alpha, spec.target_modules) == (4, 16.0, tuple(sorted(BODY + ["lm_head"])))


def test_adapter_entries_refuse_a_model_that_trains_more_than_its_adapters():
    model = _lora_model()
    model.base_model.model.model.norm.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="model.norm.weight"):
        adapter_entries(model)


def test_written_adapter_loads_in_peft_as_the_same_model(tmp_path):
    from peft import PeftModel

    model = _lora_model()
    named = [(e.name, e.compute()) for e in adapter_entries(model)]
    out = write_adapter(tmp_path / "v1", adapter_spec(model), named)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(_llama(), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=1e-6)


def test_load_into_peft_reproduces_the_learner_and_refuses_strangers():
    source = _lora_model(seed=3)
    named = [(e.name, e.compute()) for e in adapter_entries(source)]
    from peft import get_peft_model

    target = get_peft_model(_llama(), adapter_spec(source).lora_config()).eval()
    load_into_peft(target, named)
    with torch.no_grad():
        torch.testing.assert_close(target(IDS).logits, source(IDS).logits, rtol=0, atol=1e-6)
    with pytest.raises(KeyError, match="different adapters"):
        load_into_peft(target, named[:-1])


def test_vllm_max_lora_rank_rounds_up_to_a_rank_vllm_accepts():
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    with pytest.raises(ValueError, match="learner.lora.r=513"):
        vllm_max_lora_rank(513)


def test_adapter_versions_get_new_ids_and_directories(tmp_path):
    versions = AdapterVersions(tmp_path)
    (id1, dir1), (id2, dir2) = versions.next(), versions.next()
    assert (id1, id2) == (1, 2) and dir1 != dir2 and dir1.parent == dir2.parent == tmp_path
    dir1.mkdir()
    versions.drop(dir1)
    assert not dir1.exists()


def test_layout_bytes_are_the_buckets_bytes():
    fp32 = Bucket((TensorMeta("a.lora_A.weight", (4, 32), "torch.float32"), TensorMeta("a.lora_B.weight", (64, 4), "torch.float32")))
    bf16 = Bucket((TensorMeta("b.lora_A.weight", (4, 32), "torch.bfloat16"),))
    assert WeightLayout((fp32, bf16)).nbytes == (128 + 256) * 4 + 128 * 2


class FakeVLLM:
    """Records what `VLLMEngine` asks of vLLM; its worker 'writes' each adapter directory."""

    def __init__(self):
        self.llm_engine = self
        self.added, self.removed, self.resets = [], [], 0

    def collective_rpc(self, method, args):
        layout, adapter_dir = args
        Path(adapter_dir).mkdir(parents=True)
        return [([123], layout.nbytes)]

    def add_lora(self, request):
        self.added.append(request.lora_int_id)

    def remove_lora(self, lora_id):
        self.removed.append(lora_id)

    def reset_prefix_cache(self):
        self.resets += 1


def test_vllm_engine_serves_each_adapter_under_a_new_id_and_evicts_the_last(tmp_path):
    from rlhf_dist.rollout.vllm_engine import VLLMEngine
    from rlhf_dist.weight_sync.adapters import AdapterSpec

    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM start: only the adapter bookkeeping is under test
    engine.llm, engine.adapters, engine.lora_request = FakeVLLM(), AdapterVersions(tmp_path), None
    layout = WeightLayout((Bucket((TensorMeta("x.lora_A.weight", (4, 8), "torch.float32"),)),), AdapterSpec(4, 8.0, ("x",)))
    for _ in range(3):
        assert engine.receive_weights(layout) == ([123], 128)
    assert (engine.llm.added, engine.llm.removed, engine.llm.resets) == ([1, 2, 3], [1, 2], 3)
    assert engine.lora_request.lora_int_id == 3
    assert [p.name for p in tmp_path.iterdir()] == ["v000003"]  # evicted versions are deleted
