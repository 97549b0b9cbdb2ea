"""Training data: videos, their frames and the latent sets made from them.

- ``videos``: references to video files and sidecars, and their actions at a frame rate;
- ``split``: the train/validation split, by whole video;
- ``frame_cache`` and ``frames``: decoded frames for tokenizer training, cached and sampled;
- ``tokenize``: videos into a latent set with a trained tokenizer;
- ``latents`` and ``index``: the latent files of a set and its index;
- ``windows``: training windows of latents for the dynamics model.
"""
