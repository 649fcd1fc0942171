"""frontfleet's sync agent and control plane.

The same package runs on every web host (the agent daemon, the staging
receiver) and on the controller (the control plane that Fabric and the
release play call).
"""

__version__ = "0.4.1"
