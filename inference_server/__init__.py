"""sentiment-rollouts data plane: the inference server and the ML jobs that run in its image."""
