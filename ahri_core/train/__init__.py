"""Training: the one loop (``loop``), one optimisation step (``step``), checkpoints (``checkpointing``), the
stages' objectives (``objectives/``), the stage entry points (``tokenizer``, ``dynamics``, ``action_map``) and
several processes (``distributed``)."""
