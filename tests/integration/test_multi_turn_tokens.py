"""Token-exact multi-turn trajectories on the tiny model: a test engine writes each turn in a token
split that decode-then-encode does not give back (one token per character), with the model's own
log-probs of exactly those ids. After four turns with an env, the batch holds the sampled ids at the
model positions, and the learner's log-probs there match the engine's as closely as single-turn.
A holder that re-tokenises the conversation (the bug of TRL #5224, verl #3720) fails the same checks,
which the last test shows."""

import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.config.multi_turn import MultiTurnConfig
from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.driver.batch_producer import RolloutPipeline
from rlhf_dist.envs import Step
from rlhf_dist.models.loading import load_causal_lm, load_tokenizer
from rlhf_dist.models.sequences import response_logprobs
from rlhf_dist.rollout.multi_turn import MultiTurnSpec, TrajectoryPlayer
from rlhf_dist.rollout.requests import Request, Sample

REPLIES = ("hello there", "the red apple", "seven eight", "good banana")


class GoOnEnv:
    """Answers every turn with the same line; done after four turns."""

    def __init__(self, row):
        self.turns = 0

    def reset(self):
        return None

    def step(self, reply):
        self.turns += 1
        return Step(observation="go on", reward=0.25, done=self.turns == 4)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    model = load_causal_lm(str(tiny_model.policy), "float32", False).eval()
    return model, load_tokenizer(str(tiny_model.policy), False)


def char_split(tok, text: str) -> list[int]:
    """``text`` one token per character: a split the tokenizer's own encoding merges."""
    return [tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(tok(c, add_special_tokens=False)["input_ids"])[0])
            for c in text]


def forced_engine(model, tok):
    """The k-th turn of a trajectory is REPLIES[k] in characters, then eos, with the model's
    log-probs (temperature 1) of those ids after the held ones."""

    @torch.no_grad()
    def generate(requests, sampling):
        out = []
        for r in requests:
            turn = tok.decode(r.prompt_ids).count("<|assistant|>") - 1
            ids = char_split(tok, REPLIES[turn]) + [tok.eos_token_id]
            full = torch.tensor([r.prompt_ids + ids])
            logps = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
            picked = logps.gather(-1, full[0, 1:, None])[:, 0][-len(ids):].tolist()
            out.append(Sample(r.prompt_index, r.sample_index, ids, picked, REPLIES[turn]))
        return out

    return generate


@pytest.fixture(scope="module")
def played(model_and_tokenizer):
    model, tok = model_and_tokenizer
    mt = MultiTurnConfig(env=f"{__name__}:GoOnEnv", max_turns=6, max_total_tokens=256)
    messages = [{"role": "user", "content": "talk to me"}]
    prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False)["input_ids"]
    requests = [Request(0, s, prompt, seed=s, messages=messages, row={}) for s in range(2)]
    samples = TrajectoryPlayer(MultiTurnSpec(mt, 0), tok).play(requests, SamplingConfig(max_new_tokens=32), 0,
                                                                forced_engine(model, tok))
    cfg = load_config(None, ["rollout.prompts_per_step=1", "rollout.samples_per_prompt=2", "learner.mini_batch_size=2",
                             "learner.num_workers=1", "learner.micro_batch_size=2",
                             f"rollout.multi_turn.env={__name__}:GoOnEnv"])
    pipeline = RolloutPipeline(cfg, roles=None, prompts=[], pad_token_id=tok.pad_token_id, sampler=None,
                               version=lambda: 0)
    return samples, pipeline._to_experience(samples)


def learner_gap(model, exp) -> float:
    """Largest |learner - engine| log-prob over the model tokens of the batch."""
    with torch.no_grad():
        logp, _ = response_logprobs(model, exp.prompt_ids, exp.prompt_mask, exp.response_ids, exp.response_mask)
    return float(((logp - exp.rollout_logprobs).abs() * exp.model_mask).max())


def test_the_splits_are_not_what_the_tokenizer_would_give_back(model_and_tokenizer):
    _, tok = model_and_tokenizer
    for text in REPLIES:
        split = char_split(tok, text)
        assert tok.decode(split) == text and tok(text, add_special_tokens=False)["input_ids"] != split


def test_the_batch_holds_the_sampled_ids_at_the_model_positions(model_and_tokenizer, played):
    _, tok = model_and_tokenizer
    samples, exp = played
    expected = [t for reply in REPLIES for t in (*char_split(tok, reply), tok.eos_token_id)]
    for row, sample in enumerate(samples):
        assert sample.multi.turns == 4 and sample.multi.stop == "done"
        sampled = [i for i, m in zip(exp.response_ids[row].tolist(), exp.model_mask[row].tolist()) if m]
        assert sampled == expected
        assert int(exp.model_mask[row].sum()) == sum(sample.multi.model_mask) == len(expected)


def test_learner_log_probs_match_the_engine_over_four_turns(model_and_tokenizer, played):
    model, _ = model_and_tokenizer
    _, exp = played
    assert learner_gap(model, exp) < 1e-5  # the single-turn level (~3e-7 in fp32)


def test_a_re_tokenising_holder_fails_these_checks(model_and_tokenizer, played):
    """What a holder that decodes and re-encodes the conversation would train on: the rendered
    transcript. Its ids at the replies differ from those sampled, so its log-probs are of other
    tokens than the engine's."""
    model, tok = model_and_tokenizer
    samples, exp = played
    sample = samples[0]
    held = sample.multi.prompt_ids + sample.response_ids
    rendered = tok(tok.apply_chat_template(sample.multi.transcript, tokenize=False), add_special_tokens=False)["input_ids"]
    assert tok.decode(rendered) == tok.decode(held)  # the same text ...
    assert rendered != held and len(rendered) < len(held)  # ... but not the tokens the model sampled
    for reply in REPLIES:  # no sampled turn survives: each was merged into other tokens
        split = char_split(tok, reply)
        assert not any(rendered[i:i + len(split)] == split for i in range(len(rendered)))
    # and the learner, fed the held tokens, agrees with the engine on every one of them
    assert learner_gap(model, exp) < 1e-5
