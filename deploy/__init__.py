"""How georep runs elsewhere: the local stack, compose, Kubernetes and registry configs."""
