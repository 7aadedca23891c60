"""The end-to-end recipes behind `rlhf-dist demo`: preference (SFT -> RM -> PPO) and arithmetic (SFT -> GRPO)."""
