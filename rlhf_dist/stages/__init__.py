"""The supervised stages (SFT, reward model, DPO): their data, the per-rank trainer, the loop over
epochs, and reward-model calibration."""
