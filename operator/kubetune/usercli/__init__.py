"""The user's side of kubetune: `kubetune status|logs|metrics|compare|download|dashboard`, also installed as the
kubectl plugin `kubectl-ftj`.

Everything here acts with the user's own kubeconfig and the user's own storage credentials (AWS_* or a profile
for s3://), so it shows nothing the user could not read with kubectl and the store's own tools. Errors are one
line naming what is missing (commands.py prints them and exits 1).
"""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""
