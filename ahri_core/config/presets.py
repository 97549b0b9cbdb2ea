"""The model presets: for each preset name, the tokenizer and dynamics model shapes and the training defaults.

One table, :data:`PRESETS`, maps a preset (tiny, cpu, small, medium, large) to:

- ``tokenizer``: the tokenizer's config fields. ``image_size`` is the square frame of the preset; for another
  aspect it sets the pixel budget (image_size squared), and the latent tokens keep the preset's tokens per patch
  (the side of each token's square of patches), so a 16:9 source at the cpu budget is 48x80 with 60 tokens.
  All compress 16x or more;
- ``dynamics``: the dynamics model's config fields (``models/dynamics.py``);
- ``max_tokens``: the most model tokens per frame of the dynamics model: a tokenizer with more latent tokens
  is packed (``pack`` latent tokens become one model token, see ``auto_pack`` in ``models/dynamics.py``) so
  that spatial attention and the per-token MLPs cost what the preset was sized for. A 64-token tokenizer
  under the cpu preset runs as 16 tokens of 4 x C;
- ``train``: per stage (tokenizer, dynamics), defaults of ``[train]`` fields;
- ``data``: defaults of ``[data]`` fields of the dynamics stage (windows), where the preset has its own.

Where preset defaults sit in the precedence of settings: above a settings field's own default and below
everything given (a config file, ``AHRI_*`` environment variables, command-line flags, constructor
arguments). They apply only to fields the preset names.

The views below (``TOKENIZER_PRESETS``, ...) are the same values grouped per reader.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: seconds per run; the dynamics model has GQA on so the path is exercised.
    "tiny": {
        "tokenizer": dict(image_size=32, patch_size=8, dim=64, depth=1, decoder_depth=1, heads=2, tokens=4, channels=16),
        "dynamics": dict(dim=32, depth=4, heads=4, kv_heads=2, registers=2, temporal_every=2, mlp_ratio=2.0,
                         max_frames=16),
        "max_tokens": 16,
        "train": {
            "tokenizer": {"batch_size": 16, "lr": 3e-3, "warmup_steps": 10},
            "dynamics": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 20},
        },
        "data": {"seq_len_short": 16, "seq_len_long": 32, "batch_size_short": 8, "batch_size_long": 4, "stride": 4},
    },
    # the demo preset: trains in minutes on 2 CPU cores.
    "cpu": {
        # tokenizer: one latent token per 8x8 patch (64 x 12 = 16x). Sized by measured 3-minute runs on 2 cores
        # (docs/benchmarks.md): per-patch tokens beat 16 x 32 by 1.4 dB, width 128 beats 192 and a one-block
        # encoder with a three-block decoder beats 2 + 2, because more steps fit in the time.
        "tokenizer": dict(image_size=64, patch_size=8, dim=128, depth=1, decoder_depth=3, heads=4, tokens=64,
                          channels=12),
        # dynamics: a few hundred thousand parameters.
        "dynamics": dict(dim=128, depth=6, heads=4, registers=4, temporal_every=3, mlp_ratio=3.0, max_frames=32),
        "max_tokens": 16,
        "train": {
            # Muon: +1.1 dB held out at equal minutes, +2.4 dB at equal steps on Super Mario Bros (docs/benchmarks.md)
            "tokenizer": {"batch_size": 16, "lr": 4e-3, "warmup_steps": 50, "optimizer": "muon"},
            "dynamics": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 50, "ema": 0.99},  # lr measured in the demo (docs)
        },
        # the demo's measured recipe, so `ahri train --alternating` on a CPU trains what the demo trains
        "data": {"seq_len_short": 16, "seq_len_long": 32, "batch_size_short": 8, "batch_size_long": 4, "stride": 4},
    },
    # single GPUs from here on; the windows are [data]'s defaults, the lengths that fit a 16 GB card (32 x 2, 64 x 1).
    "small": {
        "tokenizer": dict(image_size=128, patch_size=8, dim=384, depth=6, decoder_depth=6, heads=6, tokens=64,
                          channels=32),
        # dynamics: 512 wide, 12 layers, 8 heads (about 60M parameters).
        "dynamics": dict(dim=512, depth=12, heads=8, registers=8, temporal_every=4, mlp_ratio=4.0, max_frames=64),
        "max_tokens": 64,
        "train": {
            "tokenizer": {"batch_size": 64, "lr": 1e-3, "warmup_steps": 500},
            "dynamics": {"batch_size": 8, "lr": 3e-4, "warmup_steps": 1000, "ema": 0.999},
        },
    },
    # one size up, for a single larger GPU.
    "medium": {
        "tokenizer": dict(image_size=256, patch_size=16, dim=512, depth=8, decoder_depth=8, heads=8, tokens=256,
                          channels=32),
        "dynamics": dict(dim=768, depth=16, heads=12, kv_heads=4, registers=8, temporal_every=4, mlp_ratio=4.0,
                         max_frames=64),
        "max_tokens": 256,
        "train": {
            "tokenizer": {"batch_size": 64, "lr": 6e-4, "warmup_steps": 1000},
            "dynamics": {"batch_size": 8, "lr": 2e-4, "warmup_steps": 2000, "ema": 0.999},
        },
    },
    # several GPUs (docs/scaling.md): train the dynamics model with --fsdp and --grad-checkpointing.
    "large": {
        "tokenizer": dict(image_size=256, patch_size=16, dim=768, depth=12, decoder_depth=12, heads=12, tokens=256,
                          channels=32),
        "dynamics": dict(dim=1024, depth=24, heads=16, kv_heads=4, registers=16, temporal_every=4, mlp_ratio=4.0,
                         max_frames=128),
        "max_tokens": 256,
        "train": {
            "tokenizer": {"batch_size": 64, "lr": 4e-4, "warmup_steps": 2000},
            "dynamics": {"batch_size": 16, "lr": 1.5e-4, "warmup_steps": 4000, "ema": 0.9995},
        },
    },
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

# Views of the table, one per reader.
TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {n: p["tokenizer"] for n, p in PRESETS.items()}
DYNAMICS_PRESETS: dict[str, dict[str, Any]] = {n: p["dynamics"] for n, p in PRESETS.items()}
DYNAMICS_MAX_TOKENS: dict[str, int] = {n: p["max_tokens"] for n, p in PRESETS.items()}
TRAINING_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    stage: {n: p["train"][stage] for n, p in PRESETS.items()} for stage in ("tokenizer", "dynamics")
}
DATA_PRESETS: dict[str, dict[str, Any]] = {n: p["data"] for n, p in PRESETS.items() if "data" in p}
