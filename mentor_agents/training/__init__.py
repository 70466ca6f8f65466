"""Training the student: SFT on teacher traces, and GRPO against a teacher-guided reward, both with LoRA through TRL.

```python
config = TrainConfig(method="sft+mentor", steps=60, output_dir="runs/calc")
result = train(config, "out/tiny-student", traces=traces, rollout_fn=graph_rollout_fn(agent))
result.adapter_dir, result.metrics[-1]["reward"]
```

Read it top down: `pipeline.train` (the entry point: a method's stages) -> `sft_trainer.sft` and
`grpo_trainer.grpo` (one TRL trainer each) -> `checkpoints` (resuming, and the finished stage: its adapter with
``train_config.json`` beside it). `config` holds `TrainConfig` and where each method trains.
"""

from mentor_agents.training.checkpoints import Provenance, TrainResult, last_checkpoint, provenance, stage_info
from mentor_agents.training.config import (
    METHODS,
    SFT_FIRST,
    GRPOSettings,
    LoRASettings,
    Method,
    RunSettings,
    SFTSettings,
    TrainConfig,
    grpo_stage,
    method_dir,
    stages,
)
from mentor_agents.training.grpo_trainer import evaluate, grpo, rollout_metrics, score_rollouts
from mentor_agents.training.sft_trainer import conversation, sft, sft_dataset
from mentor_agents.training.pipeline import load_trained, merge, train

__all__ = [
    "METHODS", "SFT_FIRST", "GRPOSettings", "LoRASettings", "Method", "Provenance", "RunSettings", "SFTSettings",
    "TrainConfig", "TrainResult", "conversation", "evaluate", "grpo", "grpo_stage", "last_checkpoint",
    "load_trained", "merge", "method_dir", "provenance", "rollout_metrics", "score_rollouts", "sft", "sft_dataset",
    "stage_info", "stages", "train",
]
