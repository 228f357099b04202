"""The test cluster: a Kubernetes API server and the parts of a cluster around it, on this machine, in-process.

- `emulator`: an HTTPS API server over kmock (with `apiviews`: discovery, OpenAPI, Table views, pruning;
  `apivalidation`: the API server's bounds and metadata validation) that kopf, the official client and kubectl use;
- `harness`: the operator (its kopf handlers) in a thread, `start_emulator`, `ClusterSim` (the Job controller and
  the kubelet, played through the API), `BlockingKube`, `wait_for`, `OperatorLog`;
- `podrunner`: the Job controller and kubelet for Jobs whose pods must really run (as processes), with
  `kubelet`: what the kubelet does for a pod's container (env, volumes, security context), down to `docker run`;
- `kueuesim`: Kueue's Job webhook and job reconciler; `pss`: Pod Security admission's restricted profile;
- `hubdouble`: a Hugging Face Hub double (and a counting proxy for an HTTP object store).

The tests (tests/) and the benchmarks (bench/) use it, the way controller-runtime's tests use envtest. It needs the
`test` extra (kmock, aiohttp, the kubernetes client, kopf; the Hub double's `online` also needs huggingface_hub and
datasets). The operator and the trainer never import it (tests/test_testing_package.py checks), so their images
need none of that.
"""
