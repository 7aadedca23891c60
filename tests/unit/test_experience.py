"""Experience: shape validation, split and concat."""

import pytest
import torch

from rlhf_dist.experience import Experience, ExperienceShapeError


def make(batch=4, prompt_len=3, resp_len=5, version=0, **extra):
    torch.manual_seed(batch + prompt_len + resp_len)
    return Experience(
        prompt_ids=torch.randint(3, 100, (batch, prompt_len)),
        prompt_mask=torch.ones(batch, prompt_len),
        response_ids=torch.randint(3, 100, (batch, resp_len)),
        response_mask=torch.ones(batch, resp_len),
        rollout_logprobs=-torch.rand(batch, resp_len),
        scores=torch.arange(batch, dtype=torch.float),
        policy_versions=torch.full((batch,), version),
        reward_components={"rule": torch.arange(batch, dtype=torch.float)},
        **extra,
    )


def test_bad_shape_names_the_field():
    with pytest.raises(ExperienceShapeError, match=r"rollout_logprobs has shape \(4, 4\), expected \(4, 5\)"):
        Experience(
            prompt_ids=torch.zeros(4, 3, dtype=torch.long),
            prompt_mask=torch.ones(4, 3),
            response_ids=torch.zeros(4, 5, dtype=torch.long),
            response_mask=torch.ones(4, 5),
            rollout_logprobs=torch.zeros(4, 4),
        )
    exp = make()
    with pytest.raises(ExperienceShapeError, match=r"scores has shape \(3,\), expected \(4,\)"):
        Experience(**{**exp.__dict__, "scores": torch.zeros(3)})


def test_split_into_equal_shards_keeps_rows_in_order():
    exp = make(batch=6)
    shards = exp.split(3)
    assert [s.batch_size for s in shards] == [2, 2, 2]
    torch.testing.assert_close(shards[1].scores, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(shards[2].reward_components["rule"], torch.tensor([4.0, 5.0]))
    torch.testing.assert_close(shards[1].policy_versions, exp.policy_versions[2:4])


def test_split_uneven_is_a_clear_error():
    with pytest.raises(ExperienceShapeError, match="cannot split a batch of 4 sequences into 3"):
        make(batch=4).split(3)


def test_concat_round_trips_split():
    exp = make(batch=6)
    back = Experience.concat(exp.split(2))
    for name in ("prompt_ids", "response_ids", "rollout_logprobs", "scores"):
        torch.testing.assert_close(getattr(back, name), getattr(exp, name))


def test_concat_repads_prompts_left_and_responses_right():
    a, b = make(batch=2, prompt_len=3, resp_len=5), make(batch=2, prompt_len=5, resp_len=2)
    joined = Experience.concat([a, b])
    assert joined.prompt_ids.shape == (4, 5) and joined.response_ids.shape == (4, 5)
    # a's prompts are left padded: real tokens keep their place at the right end.
    torch.testing.assert_close(joined.prompt_ids[:2, 2:], a.prompt_ids)
    torch.testing.assert_close(joined.prompt_mask[:2, :2], torch.zeros(2, 2))
    # b's responses are right padded and the padding is masked out.
    torch.testing.assert_close(joined.response_ids[2:, :2], b.response_ids)
    torch.testing.assert_close(joined.response_mask[2:, 2:], torch.zeros(2, 3))
    assert joined.num_sampled_tokens == 2 * 5 + 2 * 2


def test_concat_keeps_each_sequences_version():
    joined = Experience.concat([make(version=1), make(batch=2, version=2)])
    assert joined.policy_versions.tolist() == [1, 1, 1, 1, 2, 2]


def test_loss_mask_drops_untrainable_sequences():
    exp = make(batch=3, trainable=torch.tensor([1.0, 0.0, 1.0]))
    assert exp.loss_mask.sum(-1).tolist() == [5.0, 0.0, 5.0]
    assert exp.response_mask.sum() == 15  # the forward passes still see every token
    plain = make(batch=2)
    assert plain.loss_mask is plain.response_mask


def test_concat_rejects_mixed_fields():
    with pytest.raises(ExperienceShapeError, match="values is set in some parts"):
        Experience.concat([make(values=torch.zeros(4, 5)), make()])
