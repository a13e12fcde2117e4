"""The tinyraft Kubernetes operator: `kopf run -m tinyraft_operator --all-namespaces`.

Importing the package registers the kopf handlers; the planner, builders and spec
modules are pure and usable on their own."""

from tinyraft_operator import handlers as handlers

__all__ = ["handlers"]
