"""One DeepSpeed learner rank (rank.py): the engine and optimizer, micro-batches, learning-rate
schedules and the PPO critic."""
