"""The tiny trained world of the play tests (made once per test process, shared with the browser test) and a
play server serving it."""

from __future__ import annotations

import contextlib

import torch
from sampling_fakes import make_world

from ahri_core.inference.world import load_world_model
from ahri_core.play.server import PlayServer
from ahri_core.play.start import start_from_run

CONTEXT = 4
_WORLDS: dict[str, tuple] = {}


def play_world(tmp_path_factory):
    """The tiny trained run of the rollout tests, made once per test process (the browser test shares it),
    loaded with two changes that make the plumbing visible in pixels: the untrained tokenizer decodes every
    latent to flat grey (its output layer starts at zero), so that layer gets random weights; and four
    training steps leave the action embedding at its small initial values, so it gets unit-size ones."""
    if "world" not in _WORLDS:
        ws, lat, run = make_world(tmp_path_factory.mktemp("playws"), videos=2)
        wm = load_world_model(run, ws)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            px = wm.tokenizer.to_pixels.weight
            px.copy_(torch.randn(px.shape, generator=g) * 0.2)
            emb = wm.dynamics.action_embed.weight
            emb.copy_(torch.randn(emb.shape, generator=g))
        _WORLDS["world"] = (ws, lat, run, wm, start_from_run(wm, CONTEXT))
    return _WORLDS["world"]


@contextlib.contextmanager
def serving(wm, start, **kw):
    """A started server and its address (``http://127.0.0.1:PORT/``, without the token)."""
    server = PlayServer(wm, start, port=0, **kw)
    server.start()
    try:
        yield server, server.url
    finally:
        server.close()


def ws_url(server) -> str:
    """The server's WebSocket with its token, as the page opens it."""
    return f"{server.url}ws?token={server.token}"
