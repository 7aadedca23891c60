"""The examples that `rlhf-dist train --help` and the stages' `--help` end with."""

TRAIN_EXAMPLES = """\
examples:
  rlhf-dist train                                  the embedded tiny CPU run (examples/tiny.yaml), 20 steps
  rlhf-dist train examples/gsm8k.yaml              a config file
  rlhf-dist train steps=50 algorithm.name=rloo     overrides: dotted keys of the config, key=value
  rlhf-dist train my.yaml learner.optimizer.lr=1e-5 --run-dir runs/lr-1e-5
  rlhf-dist train --resume runs/tiny-20260101-120000
                                                   continue a run from its last complete checkpoint
  rlhf-dist train --resume runs/tiny-20260101-120000 --from step-10
                                                   continue from an earlier checkpoint
  rlhf-dist config show my.yaml steps=50           print the resolved config that train would run
  rlhf-dist config show --defaults                 every key with its default and description

Outputs go to RUN_DIR (default runs/<name>-<timestamp>): metrics.jsonl, checkpoints/, logs/ (Ray, vLLM,
DeepSpeed and transformers logs), final/ (the trained policy). Ctrl-C stops after printing the command
that resumes; SIGTERM finishes the current step and writes a checkpoint first. --verbose shows every
library's log on the terminal; --debug shows tracebacks.
"""

STAGE_EXAMPLES = """\
examples:
  rlhf-dist {kind} data.path=data.jsonl model.path=DIR
  rlhf-dist {kind} my-{kind}.yaml epochs=3 --run-dir runs/my-{kind}

Keys: name, seed, epochs, model.*, data.* (path, prompt_key, response_key, messages_key, chosen_key,
rejected_key, max_length, eval_fraction, ...), learner.*, beta (dpo), logging.*. The model is written
to RUN_DIR/model in Hugging Face format; library logs go to RUN_DIR/logs/. --verbose shows them here.
"""
