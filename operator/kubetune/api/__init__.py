"""`kubetune.api`: the FineTuneJob contract both images share.

The operator imports it to validate specs and build the CRD; the trainer imports it to read the spec it runs
(the trainer image installs this package beside its own). So it holds only the schema (v1alpha1), its rules
(rules, k8s_validation, uris), the names everyone agrees on (constants) and the credential wiring both sides
read (credentials), and it must stay free of torch and the training libraries, and of kopf: importing it
must be cheap in either image.
"""
