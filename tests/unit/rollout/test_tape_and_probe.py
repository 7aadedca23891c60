"""The token tape and the chat-template probe of multi-turn rollouts: held tokens are the sampled ids
plus only what the template writes; separators the model never samples get mask 0; a template that
rewrites history is reported, one that cannot give a suffix is refused."""

import copy

import pytest

from rlhf_dist.errors import UserError
from rlhf_dist.rollout.chat_probe import probe_template
from rlhf_dist.rollout.tape import Tape

QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
THINK_STRIPPING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_qwen_style_turn_end_keeps_its_newline_at_mask_0_and_the_tape_equals_the_rendering(qwen_tokenizer):
    tok = qwen_tokenizer
    probe = probe_template(tok, QWEN_LIKE)
    im_end, newline = tok.convert_tokens_to_ids("<|im_end|>"), ids(tok, "\n")
    assert probe.turn_end == [im_end, *newline] and not probe.rewrites_history
    chat = [{"role": "user", "content": "what is 3 times 4?"}]
    tape = Tape.from_prompt(ids(tok, tok.apply_chat_template(chat, chat_template=QWEN_LIKE, add_generation_prompt=True,
                                                             tokenize=False)))
    turns = ["let me call a tool", "it is 12"]
    for k, reply in enumerate(turns):
        sampled = ids(tok, reply) + [im_end]  # the model stops by sampling <|im_end|>
        tape.add_model(sampled, [-0.5] * len(sampled))
        tape.add(probe.after_model_turn(sampled), "template")
        chat.append({"role": "assistant", "content": reply})
        if k == 0:
            observation = [{"role": "tool", "content": "12"}]
            message, opening = probe.message_ids(observation)
            tape.add(message, "tool")
            tape.add(opening, "template")
            chat += observation
    whole = ids(tok, tok.apply_chat_template(chat, chat_template=QWEN_LIKE, tokenize=False))
    assert tape.ids == whole  # what is held is what the template renders for the conversation
    newlines = [i for i, (t, s) in enumerate(zip(tape.ids, tape.sources)) if t == newline[0] and s == "template"]
    assert newlines and all(tape.loss_mask[i] == 0 for i in newlines)
    assert tape.model_tokens == sum(tape.loss_mask) == sum(len(ids(tok, r)) + 1 for r in turns)
    assert [lp for lp, m in zip(tape.logprobs, tape.loss_mask) if not m] == [0.0] * (len(tape) - tape.model_tokens)


def test_a_stop_without_the_end_marker_gets_the_whole_marker_from_the_template(qwen_tokenizer):
    probe = probe_template(qwen_tokenizer, QWEN_LIKE)
    assert probe.after_model_turn(ids(qwen_tokenizer, "cut off at the budget")) == probe.turn_end


def test_a_history_rewriting_template_is_reported_and_a_template_without_a_suffix_is_refused(qwen_tokenizer):
    probe = probe_template(qwen_tokenizer, THINK_STRIPPING)
    assert probe.rewrites_history and "rewrites earlier turns" in probe.summary()
    no_reply = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(UserError, match="does not write an assistant reply after its generation prompt"):
        probe_template(qwen_tokenizer, no_reply)
    bare = copy.deepcopy(qwen_tokenizer)
    bare.chat_template = None
    with pytest.raises(UserError, match="need a chat template"):
        probe_template(bare)


def test_the_tape_refuses_log_probs_that_do_not_match_and_unknown_sources():
    tape = Tape.from_prompt([1, 2])
    with pytest.raises(ValueError, match="2 sampled ids but 1 log-probs"):
        tape.add_model([3, 4], [-0.1])
    with pytest.raises(ValueError, match="source must be one of"):
        tape.add([5], "model")
    tape.add_model([3], [-0.1])
    tape.add([6, 7], "env")
    assert tape.response() == ([3, 6, 7], [1, 0, 0], [-0.1, 0.0, 0.0]) and tape.count("env") == 2
