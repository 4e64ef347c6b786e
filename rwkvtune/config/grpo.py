"""``GRPOConfig``: the seed README's GRPO fields and defaults, TRL 1.16's names and meanings where the seed
is silent, and the training loop's fields (``LoopConfig``).

Batch arithmetic (the spec's section 1, with prompts counted as the seed does): a micro-batch is
``micro_bsz`` prompts x ``num_generations`` completions; one rollout samples ``steps_per_generation``
micro-batches of prompts at once and is trained on for ``steps_per_generation x num_iterations``
micro-steps; an optimizer step accumulates ``accumulate_grad_batches`` micro-steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from rwkvtune.config.train import STRATEGIES, LoopConfig, _booleans, _choice, _help, _integers

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
#: The rollout runs the model's own weights: strategies that shard them (DeepSpeed, FSDP) cannot sample.
GRPO_STRATEGIES = ("auto", "ddp", "single_device")


@dataclass
class GRPOConfig(LoopConfig):
    """GRPO training (``GRPOTrainer``)."""

    # Core
    micro_bsz: int = _help("Prompts per device per micro-step (each with num_generations completions).", 1)
    num_generations: int = _help("Completions sampled per prompt (the group size G, >= 2).", 8)
    num_iterations: int = _help("Micro-steps over each rollout (mu): > 1 reuses it with importance ratios.", 1)
    steps_per_generation: int = _help("Micro-batches of prompts sampled together in one rollout (S).", 1)

    # Generation
    max_prompt_length: int = _help("Prompt tokens kept (the last ones; longer prompts are cut on the left).", 512)
    max_completion_length: int = _help("Most tokens sampled per completion.", 256)
    temperature: float = _help("Sampling temperature; training log-probs use the same (TRL).", 1.0)
    top_p: float = _help("Nucleus sampling mass (1 = off).", 1.0)
    top_k: int = _help("Sample among the k most likely tokens (0 = off).", 0)
    repetition_penalty: float = _help("Repetition penalty while sampling (1 = off).", 1.0)

    # Loss and optimisation
    loss_type: str = _help(f"One of {', '.join(LOSS_TYPES)} (TRL's definitions; dapo = global token mean).", "dapo")
    epsilon: float = _help("Lower clip range: ratios below 1 - epsilon are clipped.", 0.2)
    epsilon_high: float | None = _help("Upper clip range (None = epsilon); for cispo the absolute ratio cap.", None)
    delta: float | None = _help("Two-sided clipping: cap on the unclipped ratio (None = off).", None)
    scale_rewards: str = _help("Divide advantages by the group std, the batch std, or not: group, batch, none.",
                               "group")
    advantage_clip: float | None = _help("Clamp every advantage to [-advantage_clip, advantage_clip] after "
                                         "scaling (None = off).", None)
    low_reward_threshold: float | None = _help(
        "A group whose best reward is below this is low-quality: its advantages are multiplied by "
        "low_reward_scale (None = off).", None)
    low_reward_scale: float = _help("Factor applied to the advantages of low-quality groups.", 0.01)
    beta: float = _help("Weight of the k3 KL to the reference model (the starting policy).", 0.0)
    reward_weights: list[float] | None = _help("One weight per reward function (None = all 1).", None)
    importance_sampling_level: str = _help("token, or sequence (GSPO: the length-normalised sequence ratio).",
                                           "token")
    use_bias_correction_kl: bool = _help("Multiply the KL by the importance ratio (TRL 1.16's default).", True)
    mask_truncated_completions: bool = _help("Leave completions that hit max_completion_length out of the loss.",
                                             False)
    top_entropy_quantile: float = _help("Train only the tokens whose entropy is in this top fraction (1 = all).",
                                        1.0)
    off_policy_mask_threshold: float | None = _help(
        "Drop negative-advantage completions whose mean (old - current) log-prob exceeds this (None = off).", None)
    entropy_coef: float = _help("Weight of the entropy bonus subtracted from the loss.", 0.0)
    multi_objective_aggregation: str = _help("sum_then_normalize (weighted sum, then scale) or normalize_then_sum "
                                             "(GDPO: standardise each reward, sum, standardise).",
                                             "sum_then_normalize")
    sapo_temperature_pos: float = _help("sapo: gate temperature for positive advantages.", 1.0)
    sapo_temperature_neg: float = _help("sapo: gate temperature for negative advantages.", 1.05)
    vespo_k_pos: float = _help("vespo: k for positive advantages.", 2.0)
    vespo_lambda_pos: float = _help("vespo: lambda for positive advantages.", 3.0)
    vespo_k_neg: float = _help("vespo: k for negative advantages.", 3.0)
    vespo_lambda_neg: float = _help("vespo: lambda for negative advantages.", 2.0)
    lr_init: float = _help("Peak learning rate, reached after warmup.", 1e-6)
    lr_final: float = _help("Learning rate at the last step.", 1e-7)
    warmup_steps: int = _help("Optimizer steps of linear warmup from 0 to lr_init.", 0)
    epoch_count: int = _help("Passes over the prompts.", 1)
    # TRL's (HF's) AdamW settings: RWKV-LM's eps of 1e-18 turns the noise of policy gradients near zero into
    # full-size steps.
    beta2: float = _help("AdamW beta2.", 0.999)
    adam_eps: float = _help("AdamW epsilon.", 1e-8)

    # Checkpoints and logging
    output_dir: str = _help("Where checkpoints, logs, rollouts and the final model go.", "output_grpo")
    save_rollout_steps: int = _help("Write the rollouts of every N-th optimizer step as JSONL (0 = never).", 0)
    save_rollout_path: str | None = _help("Directory for rollout files (None = <output_dir>/rollouts).", None)
    log_completions: bool = _help("Print the first completions of the latest rollout at every log.", False)
    num_completions_to_print: int = _help("How many completions log_completions prints.", 4)

    # Generation speed and memory
    prefill_chunk_size: int = _help("Most prompt tokens per row in one prefill forward.", 2048)
    max_prefill_batch_size: int = _help("Most prompts in one prefill forward (-1 = all).", -1)
    max_decode_batch_size: int = _help("Most completions decoded together (-1 = all).", -1)
    logprob_batch_size: int | None = _help("Completions per training forward, a multiple of num_generations "
                                           "(None = the whole micro-batch).", None)

    @property
    def completions_per_micro_batch(self) -> int:
        return self.micro_bsz * self.num_generations

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether an optimizer step can fall between sampling a rollout and training on it (TRL's rule):
        then the ratios need the log-probs of sampling time."""
        return self.accumulate_grad_batches % (self.steps_per_generation * self.num_iterations) != 0

    def _problems(self) -> list[str]:
        problems = super()._problems()
        problems += _integers(self, ("num_iterations", "steps_per_generation", "max_prompt_length",
                                     "max_completion_length", "prefill_chunk_size"), minimum=1)
        problems += _integers(self, ("top_k", "save_rollout_steps", "num_completions_to_print"), minimum=0)
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            problems.append(f"num_generations must be an integer >= 2 (advantages compare completions of one "
                            f"prompt), got {self.num_generations!r}")
        for name in ("max_prefill_batch_size", "max_decode_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or (value < 1 and value != -1):
                problems.append(f"{name} must be an integer >= 1 or -1 (unbounded), got {value!r}")
        problems += _choice("loss_type", self.loss_type, LOSS_TYPES)
        problems += _choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        problems += _choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        problems += _choice("multi_objective_aggregation", self.multi_objective_aggregation, AGGREGATIONS)
        problems += _booleans(self, ("use_bias_correction_kl", "mask_truncated_completions", "log_completions"))
        positive = ("temperature", "epsilon", "repetition_penalty", "sapo_temperature_pos", "sapo_temperature_neg")
        problems += [f"{name} must be > 0, got {getattr(self, name)!r}" for name in positive
                     if not getattr(self, name) > 0]
        optional_positive = ("epsilon_high", "delta", "advantage_clip")
        problems += [f"{name} must be None or > 0, got {getattr(self, name)!r}" for name in optional_positive
                     if getattr(self, name) is not None and not getattr(self, name) > 0]
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_entropy_quantile <= 1:
            problems.append(f"top_entropy_quantile must be in [0, 1], got {self.top_entropy_quantile}")
        if self.beta < 0 or self.entropy_coef < 0 or self.low_reward_scale < 0:
            problems.append("beta, entropy_coef and low_reward_scale must be >= 0")
        if self.reward_weights is not None and (not isinstance(self.reward_weights, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.reward_weights)):
            problems.append(f"reward_weights must be None or a list of numbers, got {self.reward_weights!r}")
        if self.logprob_batch_size is not None:
            size = self.logprob_batch_size
            if not isinstance(size, int) or size < self.num_generations or size % self.num_generations:
                problems.append(f"logprob_batch_size must be a multiple of num_generations ({self.num_generations}) "
                                f"so that a forward holds whole prompt groups, got {size!r}")
            elif self.top_entropy_quantile < 1 and size < self.completions_per_micro_batch:
                problems.append("top_entropy_quantile < 1 needs the whole micro-batch in one forward (its "
                                "threshold is over all of the micro-batch's tokens); leave logprob_batch_size unset")
        if self.strategy in STRATEGIES and self.strategy not in GRPO_STRATEGIES:
            problems.append(f"GRPO runs on one device or under DDP (strategy 'auto' or 'ddp'), not {self.strategy!r}: "
                            "its rollouts run the model's own weights, which sharded strategies split")
        return problems
