"""The kubetune operator: kopf runs the process (handlers.py); the watches (watches.py) queue FineTuneJobs (queue.py)
for reconcile passes (reconciler.py) over pure builders (builders.py) and a pure status computation (status.py), with
an own API client (kube.py). docs/operator.md, "Design", says why it is built so."""
