"""`rlhf-dist make-tiny` writes models that transformers loads and the real vLLM engine runs."""

import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    result = subprocess.run(
        [sys.executable, "-m", "launch", "make-tiny", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return out


def test_policy_and_reward_load_with_transformers(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "policy")
    assert tok.pad_token is not None and tok.eos_token is not None and tok.pad_token_id != tok.eos_token_id
    text = "write letters a a a 123 zebra"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy")
    assert policy.config.hidden_size // policy.config.num_attention_heads == 64
    assert 0.1e6 < sum(p.numel() for p in policy.parameters()) < 2e6
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "reward")
    batch = tok(["a b c", "the cat sat on the mat"], return_tensors="pt", padding=True)
    scores = reward(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def test_qwen2_architecture(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_dist.config import TinyModelConfig
    from rlhf_dist.models.tiny import make_tiny

    paths = make_tiny(tmp_path, TinyModelConfig(arch="qwen2"))
    model = AutoModelForCausalLM.from_pretrained(paths.policy)
    assert model.config.model_type == "qwen2"


def test_vllm_generates_what_transformers_computes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(tiny_dir / "policy")
    prompts = [tok(p).input_ids for p in ("write letters a a", "count one two three", "the red apple")]
    llm = LLM(model=str(tiny_dir / "policy"), dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
    greedy = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=8, temperature=0.0, logprobs=0)
    )
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy").eval()
    for prompt, out in zip(prompts, greedy):
        vllm_ids = list(out.outputs[0].token_ids)
        assert len(vllm_ids) >= 1
        full = torch.tensor([prompt + vllm_ids])
        with torch.no_grad():
            logits = hf(full).logits[0, len(prompt) - 1 : -1]
        # Greedy: vLLM picked transformers' argmax at every step ...
        assert logits.argmax(-1).tolist() == vllm_ids
        # ... and reported the same log-probabilities (fp32 on both sides).
        hf_logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(vllm_ids)[:, None])[:, 0]
        vllm_logp = torch.tensor([lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, vllm_ids)])
        torch.testing.assert_close(vllm_logp, hf_logp, atol=1e-4, rtol=0)


def test_our_engine_returns_the_texts_vllm_detokenizes(tiny_dir):
    """`VLLMEngine` asks vLLM for tokens only and decodes each response once; the texts are those of
    vLLM's own incremental detokenizer, which holds back a response's unfinished UTF-8 ending (a
    random model stops inside one in about a quarter of these responses)."""
    from vllm import SamplingParams

    from rlhf_dist.config import load_config
    from rlhf_dist.rollout.requests import Request
    from rlhf_dist.rollout.spec import EngineSpec
    from rlhf_dist.rollout.vllm_engine import VLLMEngine

    cfg = load_config(None, ["rollout.sampling.max_new_tokens=24"])
    engine = VLLMEngine(EngineSpec.from_config(cfg, str(tiny_dir / "policy"), seed=0))
    prompt = engine.tokenizer.encode("write letters: cat banana")
    requests = [Request(0, i, prompt, seed=i) for i in range(128)]
    ours = engine.generate(requests, cfg.rollout.sampling)
    params = [SamplingParams(max_tokens=24, temperature=1.0, seed=i) for i in range(128)]
    theirs = engine.llm.generate([{"prompt_token_ids": prompt}] * 128, params, use_tqdm=False)
    assert [s.response_ids for s in ours] == [list(o.outputs[0].token_ids) for o in theirs]
    assert [s.text for s in ours] == [o.outputs[0].text for o in theirs]
    assert sum(s.text != engine.tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in ours) > 0
