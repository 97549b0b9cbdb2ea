"""Measuring a world model: ``ahri eval`` (``evaluate``), its clips, probes, image metrics and ``metrics.json``
layout (``report``), and the latent-action probe statistics."""
