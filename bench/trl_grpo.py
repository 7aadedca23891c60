"""TRL's side of bench/vs_trl.py: `GRPOTrainer` on the workload a JSON spec describes, timed per phase.

    bench/.trl-venv/bin/python bench/trl_grpo.py SPEC.json OUT.json

Runs in TRL's own venv (bench/vs_trl.py builds it), so it imports nothing of ours: the reward arrives
as the source of our rule in the spec, and is called as our rule is (one prompt, one response).
Writes per optimizer step: wall seconds between consecutive step ends, seconds in generation
(``_generate``), reward (``_calculate_rewards``) and the reference model's log-probs, the generated
tokens and the mean reward.
"""

from __future__ import annotations

import json
import sys
import time
from functools import wraps

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class Clock:
    """Seconds spent in named phases since the last `take`."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, obj, method: str, phase) -> None:
        inner = getattr(obj, method)

        @wraps(inner)
        def timed(*args, **kwargs):
            name = phase(*args, **kwargs) if callable(phase) else phase
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        setattr(obj, method, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


class Steps(TrainerCallback):
    def __init__(self, clock: Clock):
        self.clock, self.rows, self.last = clock, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.last is None:
            self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.rows.append({"step": now - self.last, **self.clock.take()})
        self.last = now


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    torch.manual_seed(spec["seed"])
    namespace: dict = {}
    exec(spec["reward_source"], namespace)  # our rule, verbatim (bench/vs_trl.py reads it with inspect)
    rule = namespace[spec["reward_name"]]
    rewards_seen: list[list[float]] = []
    lengths_seen: list[int] = []

    def reward(prompts, completions, completion_ids, **_):
        scores = [float(rule(p, c)) for p, c in zip(prompts, completions)]
        rewards_seen.append(scores)
        lengths_seen.append(sum(len(ids) for ids in completion_ids))
        return scores

    prompts = [json.loads(line)["prompt"] for line in open(spec["prompts"])]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = GRPOConfig(
        output_dir=spec["out_dir"], max_steps=spec["steps"], learning_rate=spec["lr"], beta=spec["beta"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=spec["max_grad_norm"],
        per_device_train_batch_size=spec["micro_batch"], gradient_accumulation_steps=spec["batch"] // spec["micro_batch"],
        num_generations=spec["samples_per_prompt"], max_completion_length=spec["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, num_iterations=1, epsilon=spec["clip"], loss_type="dapo",
        use_vllm=False, use_cpu=True, bf16=False, fp16=False, logging_steps=1, save_strategy="no", report_to=[],
        seed=spec["seed"], dataloader_num_workers=0, disable_tqdm=True, log_completions=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": prompts}))
    clock = Clock()
    clock.wrap(trainer, "_generate", "generate")
    clock.wrap(trainer, "_calculate_rewards", "score")
    ref = trainer.ref_model
    clock.wrap(trainer, "_get_per_token_logps_and_entropies",
               lambda m, *a, **k: "reference" if ref is not None and m is ref else "logprobs")
    steps = Steps(clock)
    trainer.add_callback(steps)
    started = time.perf_counter()
    trainer.train()
    rows = steps.rows
    per_step = max(1, len(rewards_seen) // max(1, len(rows)))
    for i, row in enumerate(rows):
        scores = [s for batch in rewards_seen[i * per_step:(i + 1) * per_step] for s in batch]
        row["reward"] = sum(scores) / max(1, len(scores))
        row["tokens"] = sum(lengths_seen[i * per_step:(i + 1) * per_step])
        row["train"] = row["step"] - sum(row.get(k, 0.0) for k in ("generate", "score", "reference"))
    json.dump({"rows": rows, "wall": time.perf_counter() - started, "threads": torch.get_num_threads(),
               "versions": {"trl": __import__("trl").__version__, "torch": torch.__version__,
                            "transformers": __import__("transformers").__version__}},
              open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
