"""Using a trained world model: the model bundle (``world``), the one sampler (``sampler``) and ``ahri rollout``
(``rollout``)."""
