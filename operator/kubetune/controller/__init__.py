"""The kubetune operator: kopf handlers (handlers.py) over pure builders (builders.py) and a pure
status computation (status.py)."""
