"""Sharding work over a role's workers: every worker gets its part, uneven where it must be."""

from types import SimpleNamespace

import pytest
import torch

from rlhf_dist.driver.remote_calls import shard_sizes, shards
from rlhf_dist.experience import Experience, ExperienceShapeError, columns_of


@pytest.mark.parametrize("total, workers, expected", [
    (8, 2, [4, 4]), (7, 3, [3, 2, 2]), (2, 3, [1, 1, 0]), (0, 2, [0, 0]),
])
def test_shard_sizes_are_as_even_as_possible_and_cover_everything(total, workers, expected):
    assert shard_sizes(total, workers) == expected
    assert sum(shard_sizes(total, workers)) == total


def test_shards_keep_order_and_every_item_once():
    assert shards(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]


def _exp(batch: int) -> Experience:
    return Experience(
        prompt_ids=torch.arange(batch * 2).view(batch, 2), prompt_mask=torch.ones(batch, 2),
        response_ids=torch.arange(batch * 3).view(batch, 3), response_mask=torch.ones(batch, 3),
        rollout_logprobs=torch.zeros(batch, 3), prompt_index=torch.arange(batch),
    )


def test_uneven_experience_shards_rejoin_to_the_batch():
    exp = _exp(5)
    parts = exp.shards(shard_sizes(5, 2))
    assert [p.batch_size for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p.prompt_index for p in parts]), exp.prompt_index)
    with pytest.raises(ExperienceShapeError, match="do not add up"):
        exp.shards([3, 3])


def test_columns_of_rows_become_lists_in_row_order():
    rows = [SimpleNamespace(columns={"answer": 1, "id": "a"}), SimpleNamespace(columns={"answer": 2})]
    assert columns_of(rows) == {"answer": [1, 2], "id": ["a", None]}
