"""``ahri play``: steer a trained world model live from a web page.

- :mod:`.actions`: the run's own actions, their meanings and which held keys choose which action.
- :mod:`.start`: the real frames a session starts from (a clip, or the first frames of a held-out video of
  the run's latent set).
- :mod:`.dream`: the sampler of :mod:`ahri_core.inference.sampler` one frame at a time, the action of each
  frame chosen when it is made (KV cache, sliding window, context corruption: the sampler's own pieces, so a
  live session with the same actions and seed makes exactly the frames of :meth:`Sampler.rollout`).
- :mod:`.frames`: the frames a session shows and the slot that holds only the newest.
- :mod:`.recording`: a session's frames written to ``<run>/play/<time>.mp4``.
- :mod:`.session`: one page's dream: a worker thread that makes frames at the model's frame rate, pause,
  reset and recording.
- :mod:`.protocol`: the WebSocket messages between the page and the server.
- :mod:`.server`: the web server (aiohttp, the ``play`` extra): the page's three files (in ``static/``) and
  one WebSocket per page.
"""
