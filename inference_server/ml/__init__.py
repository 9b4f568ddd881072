"""The ML pipeline: one CLI (`sentiment-ml`) whose subcommands run locally and as Kubernetes Jobs."""
