"""A process kubelet for the local control plane's fake (KWOK) node.

KWOK keeps the Node alive; this package owns the lifecycle of the Pods bound to that Node: it gives
each Pod an IP from a loopback CIDR, runs every container's command as a local process group,
probes it, restarts it by the Pod's restartPolicy, reports all of it through the Pod's status
subresource, and finalises deletion. Decisions live in pure modules (env, paths, ipam, backoff,
probes, status); I/O lives in kube, processes, volumes, worker and runner.

Containers have no images and no mount namespaces, so a volumeMount's mountPath (for example
/etc/sentiment) cannot be shared by two pods: each pod's volumes are materialised under the
runner's state directory and every env value or argument that starts with a mountPath is
rewritten to the pod's own copy (see paths.py). Code that opens fixed paths it was not given
(the service-account token, for example) can look them up in the JSON env var PODRUNNER_MOUNTS.
"""
