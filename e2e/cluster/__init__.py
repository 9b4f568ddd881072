"""The local control plane: real etcd, kube-apiserver, kube-controller-manager, kube-scheduler
(built by e2e/controlplane/build.sh from pinned official Go modules), KWOK for one fake Node, the pod
runner (e2e/podrunner) for that Node's Pods, and Prometheus. `python -m e2e.cluster up|down|status`;
tests use the `cluster` fixture of e2e/conftest.py.
"""

from e2e.cluster.launcher import Cluster, default_state_dir, down, running, status, up

__all__ = ["Cluster", "default_state_dir", "down", "running", "status", "up"]
