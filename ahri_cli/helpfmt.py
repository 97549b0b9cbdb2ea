"""The help layout (options grouped in panels by topic, no type shown for plain on/off flags) and the wording of
a refused option value (without the "Value error, " that the value checks of some typer versions prefix).

typer lays each panel out as one table; a command with many options in one panel gives the option names,
their ``--no-`` forms, the types and the descriptions too little room at 80 columns, and rich then cuts the
names. Grouping a long command's options by topic keeps every panel narrow enough for whole names.
"""

from __future__ import annotations

from typing import Any

import typer
import typer.core


def _tidy(params: list[Any], panels: dict[str, str]) -> None:
    for p in params:
        if getattr(p, "is_flag", False) and not getattr(p, "count", False) and p.metavar is None:
            p.metavar = ""  # a flag takes no value: no "<bool>" in its row
        panel = panels.get(p.name or "")
        if panel and getattr(p, "rich_help_panel", None) is None:
            p.rich_help_panel = panel


class Command(typer.core.TyperCommand):
    """A command whose help puts its options in the panels of :attr:`panels` (parameter name -> panel title;
    options not named stay under "Options")."""

    panels: dict[str, str] = {}

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy(self.get_params(ctx), self.panels)
        super().format_help(ctx, formatter)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as e:
            e.message = str(e.message).removeprefix("Value error, ")
            raise


class Group(typer.core.TyperGroup):
    """The ``ahri`` group, with the same flag rows as :class:`Command`."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy(self.get_params(ctx), {})
        super().format_help(ctx, formatter)


# The help panel of each option of ``train`` (by parameter name); one not named here shows under "Options".
_TRAIN_TOPICS = {
    "Run and budget": ("stage", "run", "resume", "preset", "max_steps", "minutes", "epochs", "val_fraction",
                       "checkpoint_every", "val_every", "log_every", "seed"),
    "Tokenizer stage": ("videos", "size", "fit", "tokens", "channels", "mask_max", "val_videos", "split", "fps"),
    "Optimiser": ("batch_size", "lr", "warmup_steps", "ema", "optimizer", "grad_accum"),
    "Machine": ("device", "precision", "compile_model", "threads", "nproc"),
    "Memory and speed": ("grad_checkpointing", "fsdp"),
    "Dynamics data": ("latents", "seq_len", "stride", "alternating", "seq_len_short", "seq_len_long",
                      "batch_size_short", "batch_size_long", "long_ratio"),
    "Shortcut diffusion": ("shortcut", "k_max", "step_sampling", "ema_teacher"),
    "Training mix": ("bootstrap_fraction", "bootstrap_warmup", "single_image_fraction", "context_fraction"),
    "Latent actions": ("latent_actions", "latent_action_codes", "latent_action_history", "no_actions"),
    "Dynamics model": ("dim", "depth", "heads"),
    "Watching": ("tensorboard",),
}
TRAIN_PANELS = {p: title for title, names in _TRAIN_TOPICS.items() for p in names}


def with_panels(panels: dict[str, str]) -> type[Command]:
    """A :class:`Command` class with these panels."""
    return type("PanelCommand", (Command,), {"panels": dict(panels)})
