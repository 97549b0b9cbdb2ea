"""The networks: the video tokenizer, the dynamics model (its config and files beside it), latent actions and
the shared transformer layers."""
