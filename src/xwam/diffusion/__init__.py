"""Flow matching, Asynchronous Noise Sampling (ANS) and the asynchronous sampler."""
