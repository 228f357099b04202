"""One self-contained module per spec.objective (causal-lm -> causal_lm, ...), each exposing
`run(ctx: RunContext) -> TrainResult`; the entrypoint imports it by name."""
