"""The RL driver: the loop (loop.py), each step's batch (batch_producer.py: generate -> score ->
reference), held-out eval, advantages (shaping.py), the reward-hacking alarm, calling actors
(remote_calls.py) and what a checkpoint holds of the driver (run_state.py)."""
